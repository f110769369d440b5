"""SMP's GPT-J state-dict translation functions (see _unchanged.py: smp's state dicts are
already Hugging Face's). SMP named the second one with "gptj" twice."""

from ._unchanged import unchanged

translate_state_dict_to_hf_gptj = unchanged
translate_hf_gptj_state_dict_to_smdistributed_gptj = unchanged
