"""SMP's GPT-2 state-dict translation functions (see _unchanged.py: smp's state dicts are
already Hugging Face's)."""

from ._unchanged import unchanged

translate_state_dict_to_hf_gpt2 = unchanged
translate_hf_state_dict_to_smdistributed_gpt2 = unchanged
