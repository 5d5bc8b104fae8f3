"""``emollm import``: other projects' checkpoints and files into emollm (Emotion-LLaMA's, EVA-CLIP's)."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "import"
HELP = "import Emotion-LLaMA's checkpoint, its pre-extracted features, or the EVA-CLIP ViT-g weights"
DESCRIPTION = """\
emotion-llama CKPT --backbone LLAMA2 --out RUN
    Emotion-LLaMA's released checkpoint (MiniGPT-v2 format) -> an emollm run dir that infer, predict,
    evaluate and train read. Loaded with nothing executed (static pickle scan, weights_only=True). Every
    key is mapped (projectors, LoRA) or reported with its reason (RUN/import_report.json); an unknown key
    or a shape that does not fit the backbone is an error. Face / temporal / audio read Emotion-LLaMA's own
    pre-extracted features (--features emotion-llama, the default) or the preset's HF encoders (preset).
eva-vit EVA_VIT_G.pth --out DIR
    LAVIS's eva_vit_g.pth (BLIP-2 / MiniGPT-v2's EVA-CLIP ViT-g) -> a transformers checkpoint directory
    the `visual` encoder loads (position embeddings resized to --image-size, as MiniGPT-v2 does).
emotion-llama-features DATASET_DIR --from ROOT --config CFG
    Emotion-LLaMA's per-clip .npy features (ROOT/mae_340_UTT, maeV_399_UTT, HL-UTT) into the feature
    cache of DATASET_DIR, for the config's `precomputed` modalities (allow_pickle=False, shapes checked).

  emollm import eva-vit eva_vit_g.pth --out ~/checkpoints/eva_vit_g
  emollm import emotion-llama Emotion_LLaMA.pth --backbone meta-llama/Llama-2-7b-chat-hf \\
      --eva ~/checkpoints/eva_vit_g --out runs/emotion_llama
  emollm import emotion-llama-features data/mer2023 --from MER2023/ --config runs/emotion_llama/config.yaml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import HelpFormatter, add_config_arguments

    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    ckpt = sub.add_parser("emotion-llama", help="Emotion-LLaMA's released checkpoint -> a run dir",
                          formatter_class=HelpFormatter)
    ckpt.add_argument("checkpoint", metavar="CKPT", help="Emotion-LLaMA's .pth (MiniGPT-v2 format)")
    ckpt.add_argument("--backbone", required=True, help="LLaMA-2-7B-chat: path or hub id (the model it was trained on)")
    ckpt.add_argument("--out", required=True, metavar="RUN", help="run dir to write")
    ckpt.add_argument("--eva", default=None, metavar="DIR", help="converted EVA-CLIP dir (`emollm import eva-vit`); "
                      "default: the preset's ${EMOLLM_CHECKPOINTS}/eva_vit_g")
    ckpt.add_argument("--features", choices=("emotion-llama", "preset"), default="emotion-llama",
                      help="face/temporal/audio: Emotion-LLaMA's pre-extracted features, or the preset's HF encoders")
    ckpt.add_argument("--lora-alpha", type=int, default=None, help="default: the checkpoint's config, else 16")
    ckpt.add_argument("--preset", default="emotion_llama_llama2", help="the config the run starts from")
    ckpt.add_argument("--overwrite", action="store_true", help="replace a non-empty RUN")
    ckpt.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the preset")
    ckpt.set_defaults(_import=_emotion_llama)

    eva = sub.add_parser("eva-vit", help="LAVIS's eva_vit_g.pth -> a transformers EVA-CLIP directory",
                         formatter_class=HelpFormatter)
    eva.add_argument("checkpoint", metavar="EVA_VIT_G", help="eva_vit_g.pth, or a MiniGPT checkpoint holding visual_encoder.*")
    eva.add_argument("--out", required=True, metavar="DIR")
    eva.add_argument("--image-size", type=int, default=448, help="input size (MiniGPT-v2 / Emotion-LLaMA: 448)")
    eva.add_argument("--num-heads", type=int, default=None, help="default: hidden size / 88 (EVA-CLIP ViT-g's head width)")
    eva.add_argument("--num-layers", type=int, default=39,
                     help="blocks kept: MiniGPT-v2 / BLIP-2 build 39 and load eva_vit_g.pth's 40 non-strictly, "
                          "so its last block is unused; 0: keep every block")
    eva.set_defaults(_import=_eva_vit)

    feats = sub.add_parser("emotion-llama-features", help="Emotion-LLaMA's .npy features -> the feature cache",
                           formatter_class=HelpFormatter)
    feats.add_argument("dataset_dir", metavar="DATASET_DIR", help="built dataset whose clip ids name the .npy files")
    feats.add_argument("--from", dest="source", required=True, metavar="ROOT",
                       help="the folder holding mae_340_UTT/, maeV_399_UTT/, HL-UTT/")
    feats.add_argument("--modalities", nargs="*", default=None, help="only these precomputed modalities")
    feats.add_argument("--overwrite", action="store_true", help="rewrite entries already imported")
    add_config_arguments(feats)
    feats.set_defaults(_import=_features)


def run(args: argparse.Namespace) -> int:
    return int(args._import(args) or 0)


def _emotion_llama(args: argparse.Namespace) -> int:
    from emollm.importers.emotion_llama import import_emotion_llama

    report = import_emotion_llama(args.checkpoint, args.backbone, args.out, preset=args.preset, eva=args.eva,
                                  features=args.features, lora_alpha=args.lora_alpha, overrides=args.overrides,
                                  overwrite=args.overwrite)
    print(report.table())
    if args.features == "emotion-llama":
        print(f"next: emollm import emotion-llama-features DATASET_DIR --from ROOT --config {args.out}/config.yaml")
    return 0


def _eva_vit(args: argparse.Namespace) -> int:
    from emollm.modeling.eva_vit import convert_eva_vit

    report = convert_eva_vit(args.checkpoint, args.out, image_size=args.image_size, num_heads=args.num_heads,
                             num_layers=args.num_layers or None)
    print(json.dumps(report, indent=2, default=str))
    return 0


def _features(args: argparse.Namespace) -> int:
    from emollm import config as cfglib
    from emollm.cli.main import split_overrides
    from emollm.features.imported import import_precomputed_features

    _, overrides = split_overrides(args.overrides)
    cfg = cfglib.load(args.config, overrides)
    summary = import_precomputed_features(cfg, args.dataset_dir, args.source, modalities=args.modalities,
                                          overwrite=args.overwrite)
    print(summary.table())
    if summary.problems:
        print(f"{len(summary.problems)} problem(s), listed in {summary.errors_file}", file=sys.stderr)
        return 2
    return 0
