"""benchmarks/host_postprocess_maps.py runs (small) and prints one row per map format."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "host_postprocess_maps.py"


def test_one_row_per_format(capsys):
    spec = importlib.util.spec_from_file_location("host_postprocess_maps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--image_size", "128", "--num_classes", "6"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in ("BIN", "TXT", "FP16")}
    assert set(rows) == {"BIN", "TXT", "FP16"}
    matched, total = (int(v) for v in rows["BIN"][2].split("/"))
    assert total > 0 and matched == total and float(rows["BIN"][3]) == 0.0  # BIN is the reference itself
    assert float(rows["FP16"][0]) < float(rows["BIN"][0]) < float(rows["TXT"][0])  # 2 < 4 bytes < text a value
