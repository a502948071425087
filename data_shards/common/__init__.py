"""The bottom layer every package of the project may import: who this process is in a job
(:mod:`.distenv`), files that appear whole or not at all (:mod:`.atomic`), and the ``python -m``
command dispatcher (:mod:`.cli`).

It lives inside ``data_shards`` because the top-level layout is fixed and ``data_shards`` is the
lowest of the project's packages (it imports none of the others); nothing in ``common`` imports
anything of the project outside ``common``. ``vqa_kernels`` imports nothing of the project at all.
"""
