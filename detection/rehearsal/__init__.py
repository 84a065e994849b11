"""Rehearsal of a COCO-scale run on the CPU (``tools/rehearse.py``), planning figures for the real run
(``tools/plan_run.py``) and the prepared GPU check (``tools/gpu_check.py``)."""
