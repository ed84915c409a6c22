"""``spinenet report``: the seed's ``test_spinenet_om_data.py`` flags over ``write_report``."""

from __future__ import annotations

import argparse

REPORT_EPILOG = """\
examples:
  spinenet report --output out/20220606_222003 --label_map_file coco_label_map.csv \\
      --image_file_pattern '/tmp/imagedata/*.jpg' --output_html report.html
  spinenet report --output out/ --manifest bins/manifest.json --label_map_file coco_label_map.csv \\
      --output_html report.html --annotations instances_val2017.json      (+ COCO mAP, report_metrics.json)

--output is an msame or ais_bench output folder (TXT, BIN in fp32 or fp16, NPY): the run folder itself, or its
parent (then the newest run folder). Raw head maps (export --postprocess none) need --model raw.onnx and are
post-processed on the host with the graph's own anchors and thresholds. Image i of the sorted
--image_file_pattern (readable images only, as spinenet image2bin numbers them) goes with NNNNN_output_<k>
(ais_bench: NNNNN_<k>); --manifest (from spinenet image2bin) gives that mapping, the original
sizes and the letterbox scales instead. Boxes are mapped back with ImageInfo row 2 (the scale), not row 1.

Other sources, instead of --output (the same page):
  spinenet report --from_results eval/results.json --annotations instances_val2017.json \
      --image_file_pattern 'val2017/*.jpg' --output_html report.html     (spinenet evaluate's results)
  spinenet report --from_detect detected/ --output_html report.html   (spinenet detect --output folder)
--from_results needs --annotations (results name images by COCO id) and --image_file_pattern (the files, by
name); --from_detect finds each image at the path detect recorded, beside its detections.json, or by name in
--image_file_pattern. Both take class names from the annotations / detect's output without --label_map_file.

The page (report.html) comes with a folder beside it (report_files/: pictures, thumbnails, data); keep them
together. It opens from disk in a browser, needs no network, and has a thumbnail index, a paged detail view
and a display threshold control (--display_threshold at first).
"""


def add_report_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="HTML page of msame/infer/evaluate/detect outputs on their images "
                                             "(+ COCO mAP)",
                              description="Draw the detections of an msame, ais_bench or spinenet infer output "
                                          "folder (or spinenet evaluate's results.json, or spinenet detect's "
                                          "output) on the original images in an HTML page (with a folder of "
                                          "pictures beside it); with --annotations also mark true / false "
                                          "positives and missed objects, and score them with COCO mAP.",
                              epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--output", help="msame, ais_bench or spinenet infer output folder: the run folder or its "
                                         "parent")
    source.add_argument("--from_results", metavar="RESULTS_JSON",
                        help="spinenet evaluate's results.json (needs --annotations and --image_file_pattern)")
    source.add_argument("--from_detect", metavar="DIR",
                        help="a spinenet detect --output folder (its detections.json and the original images)")
    p.add_argument("--label_map_file", default=None,
                   help="label map, lines 'id:name' (coco_label_map.csv); required with --output, else the class "
                        "names of the annotations or of detect's output")
    p.add_argument("--label_map_format", default="csv", choices=["csv"], help="only csv, as in the seed")
    p.add_argument("--image_file_pattern", nargs="+", default=None,
                   help="glob(s) of the original images, as given to image2bin (required without --manifest)")
    p.add_argument("--manifest", default=None, help="spinenet image2bin's manifest.json (or its folder)")
    p.add_argument("--output_html", default="/tmp/test.html", help="HTML page to write (default /tmp/test.html)")
    p.add_argument("--annotations", default=None,
                   help="COCO instances JSON: compute mAP (images matched by file name)")
    p.add_argument("--max_boxes_to_draw", type=int, default=10,
                   help="most boxes drawn per image, best first (default 10, as the seed)")
    p.add_argument("--min_score_threshold", type=float, default=0.05,
                   help="lowest score kept on the page: the floor of its threshold control (default 0.05)")
    p.add_argument("--display_threshold", type=float, default=0.3,
                   help="score from which detections are drawn and counted when the page opens (default 0.3, as "
                        "spinenet detect); the page has a control to change it; the mAP always uses every detection")
    p.add_argument("--use_normalized_coordinates", action="store_true",
                   help="boxes are [0, 1] fractions of the original image (the seed's flag)")
    p.add_argument("--model", default=None,
                   help="the exported .onnx the outputs came from: required for raw head maps (--postprocess none "
                        "export), which are then post-processed here; tells BIN dtypes and shapes")
    p.add_argument("--no_progress", action="store_true", help="no progress bar, no COCO summary on stdout")
    p.add_argument("--allow_partial", action="store_true",
                   help="report on a run folder that spinenet infer did not finish (refused by default)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from spinenet.deploy.report import write_report
    from spinenet.deploy.report_sources import detect_source, results_source

    source = None
    if (args.from_results or args.from_detect) and (args.model or args.manifest or args.use_normalized_coordinates):
        flag = "--model" if args.model else "--manifest" if args.manifest else "--use_normalized_coordinates"
        raise ValueError(f"{flag} is for --output folders; --from_results and --from_detect hold boxes in original "
                         "pixels already: leave it out")
    if args.from_results:
        source = results_source(args.from_results, args.annotations, args.image_file_pattern)
    elif args.from_detect:
        source = detect_source(args.from_detect, args.image_file_pattern)
    elif args.label_map_file is None:
        raise ValueError("--label_map_file is required with --output (lines 'id:name', e.g. coco_label_map.csv)")
    output = args.output or source.path
    result = write_report(output, args.label_map_file, args.output_html, args.image_file_pattern,
                          manifest=args.manifest, annotations=args.annotations,
                          max_boxes_to_draw=args.max_boxes_to_draw, min_score_threshold=args.min_score_threshold,
                          display_threshold=args.display_threshold,
                          use_normalized_coordinates=args.use_normalized_coordinates,
                          label_map_format=args.label_map_format, verbose=not args.no_progress,
                          allow_partial=args.allow_partial, model=args.model, source=source)
    print(result.summary())
    return 0
