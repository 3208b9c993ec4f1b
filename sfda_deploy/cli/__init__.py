"""The ``sfda-deploy`` command line: parse → config → call. No logic lives here.

Every command also reads ``--config file.yaml`` whose keys are the flags' names (flags win).
User errors (``SfdaError``, bad flags) print one line and exit with code 2. The group and the shared
helpers are in ``base``; the commands register themselves on import, one module per part of the flow.
"""
from sfda_deploy.cli import adapt_commands, deploy_commands, setup_commands  # noqa: F401  (register)
from sfda_deploy.cli.base import cli, main

__all__ = ["cli", "main"]
