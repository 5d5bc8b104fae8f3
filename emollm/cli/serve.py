"""``emollm serve``: the explain page, a clip in and its label and reasoning out, in the browser."""

from __future__ import annotations

import argparse

NAME = "serve"
HELP = "the explain page: upload a clip in the browser, watch the label and reasoning stream out (a trained run)"
DESCRIPTION = """\
Serve a web page that explains clips with a trained run: upload a video or image (or pick one from
--clips DIR), choose the task, and see the parsed label, the answer as it is generated, the frames and
face crops the model was fed, the builder's cues and the time each stage took. The model is loaded
once, at start; it answers one clip at a time (a second request meanwhile is told "busy").

The page binds 127.0.0.1 unless --host says otherwise; on any other address it requires a token
(--token, or one generated and printed with the URL).

  emollm serve --model runs/my_run
  emollm serve --model runs/my_run --clips data/clips --port 8080
  emollm serve --model runs/my_run --host 0.0.0.0 --token "$(openssl rand -hex 16)"
  emollm serve --model runs/my_run build.asr=whisper          # run-config overrides, as `emollm infer` takes them
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override the run's config (e.g. build.asr=whisper), as `emollm infer` does")
    parser.add_argument("--model", required=True, metavar="RUN_DIR",
                        help="the run dir train.py wrote, or an `emollm export --model` of it")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but loopback requires a token")
    parser.add_argument("--token", default=None,
                        help="access token (16+ characters); default: none on loopback, else a generated one")
    parser.add_argument("--clips", default=None, metavar="DIR",
                        help="a folder whose video / image files the page offers by name")
    parser.add_argument("--max-upload-mb", type=float, default=200, metavar="MB", help="the largest upload taken")
    group = parser.add_argument_group("model and generation (default: the run's predict.* settings)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    group.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                       help="load the backbone in this dtype (default: as trained)")
    group.add_argument("--max-new-tokens", type=int, default=None, metavar="N")
    group.add_argument("--temperature", type=float, default=None, help="0: greedy; > 0: sampling")
    group.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --temperature > 0)")
    group.add_argument("--num-beams", type=int, default=None, metavar="N",
                       help="1: greedy (streamed); > 1: beam search (the answer comes at once)")
    group.add_argument("--seed", type=int, default=None, help="seed for sampling, set once at start")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from emollm.config.paths import check_input_paths
    from emollm.errors import ConfigError
    from emollm.inference import run_config
    from emollm.web import require_web, resolve_token, serve
    from emollm.web.explain import explain_app

    require_web()
    for flag, folder, what in (("--model", args.model, "the run dir"), ("--clips", args.clips, "a folder of clips")):
        if folder is not None and not Path(folder).expanduser().is_dir():
            state = "is a file, not a folder" if Path(folder).expanduser().exists() else "no such folder"
            raise ConfigError(f"{flag}: {state}: {folder} ({what})")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive (got {args.max_upload_mb:g})")
    token = resolve_token(args.host, args.token)  # a bad --token fails before the model loads
    check_input_paths(run_config(args.model, args.overrides), "infer", run_dir=args.model)  # before the model loads
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    generation = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                  "num_beams": args.num_beams}
    app = explain_app(args.model, clips_dir=args.clips, device=args.device, dtype=args.dtype,
                      overrides=args.overrides, generation=generation, max_upload_mb=args.max_upload_mb)
    serve(app, host=args.host, port=args.port, token=token, what="explain")
    return 0
