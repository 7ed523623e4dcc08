"""The bottom layer: helpers that training, evaluation and the report all use, each in one place.

- ``numbers``: the one parser of eps and step sizes (fractions such as ``16/255``);
- ``seeding``: derived seeds and seeding every generator;
- ``modes``: eval mode and frozen parameters while an attack runs, restored afterwards;
- ``provenance``: the record of what produced a result (git commit, versions, machine);
- ``lock``: one process at a time in a run, evaluation or study directory;
- ``children``: worker processes that end with the process that started them;
- ``trainings``: the two training kinds (regular, adversarial);
- ``toml``: reading TOML files (tomllib, or tomli before Python 3.11).

Nothing here imports from the rest of lrrobust but ``lrrobust.errors``.
"""
