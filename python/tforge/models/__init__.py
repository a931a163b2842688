"""tforge's models: a GPT-style decoder and a BERT-style encoder built from
tforge.nn modules and public tforge ops, their configs, HF BERT
loading and LoRA helpers. Every model returns a ModelOutput(loss, logits)."""
from tforge.models.bert import BertEncoder, BertForMaskedLM, BertForSequenceClassification
from tforge.models.config import BertConfig, GPTConfig
from tforge.models.gpt import GPT
from tforge.models.hf import load_hf_bert
from tforge.models.lora import apply_lora, merge_lora
from tforge.models.output import ModelOutput

__all__ = ["GPT", "GPTConfig", "BertConfig", "BertEncoder", "BertForMaskedLM", "BertForSequenceClassification",
           "load_hf_bert", "apply_lora", "merge_lora", "ModelOutput"]
