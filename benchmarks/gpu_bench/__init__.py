"""GPU speed of SpineNet-49S RetinaNet against torchvision's ``retinanet_resnet50_fpn``, measured in one call.

Everything runs in one process (``spinenet train`` itself and two optional variants run in child processes),
on random weights (nothing is downloaded), at one square input size (640 by default), and prints a table, the
issue's done-when ratios against their targets, and a JSON file (rewritten after every row, so a killed run
keeps what it measured). One concern per module:

* :mod:`.cli` arguments and the run; :mod:`.plan` the order (done-when rows first, optional rows while the
  budget lasts); :mod:`.timing` the timer, memory and budget; :mod:`.report` table, ratios, JSON;
  :mod:`.machine` the environment (torch, ``lscpu``, ``nvidia-smi``).
* :mod:`.forward` backbone + head; :mod:`.end_to_end` uint8 in, detections (NMS included) out, and the
  post-processing alone; :mod:`.graphs` CUDA graphs; :mod:`.compiled` torch.compile; :mod:`.children` the
  child processes; :mod:`.models` this project's detector made informative; :mod:`.peers` torchvision's.
* :mod:`.train_step` training: ``spinenet train``'s own step and loader (through :mod:`.engine_api`, the one
  file that calls into ``spinenet.engine``) against torchvision's step, anchor labelling inside the timed step
  on both sides; :mod:`.train_cli` ``spinenet train`` itself for ``--train_cli_steps`` steps on synthetic 640²
  data, images/s from its own log.

Each row: ms per batch (median and p90 of host wall time per call with a device synchronise after each call;
the CUDA-event time is in the JSON too), images/s (batch / median), and the peak device memory of the row
(``torch.cuda.max_memory_allocated`` above what was allocated before the row, plus the row's own weights and
optimiser state; the absolute figure is in the JSON). On a CPU, and for loader rows, the memory column is the
process's peak RSS. fp32 rows run with PyTorch's defaults (cuDNN may use TF32; the flags are in the JSON).

    python benchmarks/gpu_speed.py --output gpu_speed.json        # GPU: about 6 to 8 min on an H100/H200
    python benchmarks/gpu_speed.py --train_cli_only --output train_cli.json   # only `spinenet train` itself
    python benchmarks/gpu_speed.py --device cpu --smoke --output /tmp/smoke.json   # plumbing check, ~30 s
"""
