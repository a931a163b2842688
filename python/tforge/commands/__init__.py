"""The `tforge` commands, one module per verb (pretrain, finetune, evaluate,
predict, compress, bench, demo), each with DEFAULTS (its embedded config) and
run(cfg); shared pieces: config (TOML + overrides), runs (run folders, model
and tokenizer loading), lm_data and cls_data (data, evaluation, baseline)."""
