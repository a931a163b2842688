"""The `tforge` commands, one module per verb (pretrain, finetune, evaluate,
predict, compress, bench, demo), each with CONFIG (its config dataclass: one
field per TOML section, each setting declared once with its default, help,
allowed values and flag) and run(cfg); shared pieces: config (declaring,
resolving, checking and writing configs), sections ([run] and [train] that
several verbs share), runs (run folders, model and tokenizer loading), lm_data
and cls_data (data, evaluation, baseline)."""
