"""Smoke-size parameters: the whole pipeline in about a minute on 2 cores."""

SMOKE = {
    "scrape": {"offline": {"styles": ["twemoji", "openmoji"], "max_emoji": 16, "render_size": 64}},
    "prepare": {"val_fraction": 0.25, "workers": 0},
    "upscale": {"train_steps": 3, "train_batch": 2, "train_patch": 8, "train_images": 8, "eval_images": 4},
    "tokenize": {
        "image": {"preset": "tiny", "train_steps": 4, "batch_size": 4},
        "text": {"vocab_size": 64},
        "captions": {"max_colour_emoji": 4},
    },
    "finetune": {
        # The demo's text path (a frozen encoder's caption vectors) at tiny size.
        "model": {"preset": "tiny-encoder"},
        "train": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2},
        "eval": {
            "every": 2,
            "prompts": ["кошка", "Эйнштейн улыбается"],
            "images_per_prompt": 2,
            "top_k": 8,
            "max_val_pairs": 8,
            "caption_pairs": 4,
            "sets": ["prompts/colours.tsv"],
            "learnt_names": 4,
        },
    },
    "generate": {
        "attempts": 2,
        "keep_best": 1,
        "batch_size": 8,
        "sheet_thumb": 32,
        "eval_sets": ["prompts/colours.tsv"],
        "eval_attempts": 1,
        "grid": {"top_k": [8, 32], "top_p": [0.995], "temperature": [1.0], "seed": [42]},
    },
    "segment": {
        "preset": "tiny",
        "max_train_images": 16,
        "pseudolabel": {"max_rounds": 1, "steps_initial": 3, "steps_per_round": 2, "batch_size": 4},
    },
}
