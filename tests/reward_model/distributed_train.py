"""Run by ``test_distributed.py`` under torchrun: ``verl-variance train-rm``, recording what each process
trains on.

Every training forward pass of the stage-1 model appends its ``input_ids`` to ``$SEEN_DIR/seen_rank<RANK>.json``.
"""

import json
import os
import sys
from pathlib import Path

import verl_variance.reward_model.train as train
from verl_variance.cli import main

seen: list[list[list[int]]] = []
_load_backbone = train.load_backbone


def load_backbone(*args, **kwargs):
    model, tokenizer = _load_backbone(*args, **kwargs)

    def record(module, positional, keywords):
        if module.training:
            seen.append(keywords["input_ids"].tolist())

    model.register_forward_pre_hook(record, with_kwargs=True)
    return model, tokenizer


train.load_backbone = load_backbone
code = main(sys.argv[1:])
Path(os.environ["SEEN_DIR"], f"seen_rank{os.environ['RANK']}.json").write_text(json.dumps(seen))
sys.exit(code)
