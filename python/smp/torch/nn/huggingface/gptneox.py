"""SMP's GPT-NeoX state-dict translation functions (see _unchanged.py: smp's state dicts are
already Hugging Face's)."""

from ._unchanged import unchanged

translate_state_dict_to_hf_gptneox = unchanged
translate_hf_state_dict_to_smdistributed_gptneox = unchanged
