"""Checkpoint selection without labels, one concept per module (docs/contracts.md, "What `adapt` ships"):

* ``scores``: the label-free criteria (IM, SND, mix) and the class marginal and shares beside them;
* ``collapse``: the collapse detector and its references (source, AdaBN, both);
* ``rule``: what ships from the scored points (``decide``: the floor, the margin, the fallback);
* ``settings``: ``SelectionSpec`` (the ``--select-by`` ... flags checked, under their names) and resume checks;
* ``probe``: a model run over the fixed target sample → every score;
* ``tracker``: the in-loop state (``Selection``: scoring points, the best checkpoint on disk, the decision);
* ``records``: finished runs' records read (old names too) and the rule re-applied to them (``replay``).
"""
