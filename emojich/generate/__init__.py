"""Generation (the generate stage, `emojich generate` and the bot): prompts, sampling, the sampling
grid's cells, 512 px rendering, per-image records, contact sheets and caption retrieval.

Modules in the order a cell uses them: `prompts`, `loading`, `sampling`, `cell`, `rendering`,
`records`, `evaluation`, `sheets`, `run`. May import the parts below it: `foundation`, `text`,
`data`, `models`, `fidelity`, `upscale`.
"""
