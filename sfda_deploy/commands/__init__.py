"""The commands: one entry point per ``sfda-deploy`` command, each taking its config dataclass
(``sfda_deploy.config``), above the libraries (``adapt/``, ``runtime/``, ``export/``, ``data/`` ...).

A command reads its config, checks what the libraries cannot (flag combinations, missing flags), makes
its run directory, calls the library pieces with plain arguments and says what it wrote. The libraries
below never read a command's config or import from here; ``cli/`` (and ``scripts/``) call these entry
points. One module per command family (docs/design.md, "Adding a command").
"""
