"""HF transformers + PEFT as the reference: per-sequence greedy decoding with full-recompute forwards.

Nobody here wrote these models; every logit the engine computes is compared against them.
"""

from __future__ import annotations

import torch


class HFReference:
    def __init__(self, model_dir, adapters: dict[str, str] | None = None):
        from transformers import AutoModelForCausalLM
        self.base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.model = self.base
        self.names = []
        if adapters:
            from peft import PeftModel
            items = list(adapters.items())
            self.model = PeftModel.from_pretrained(self.base, items[0][1], adapter_name=items[0][0])
            for name, path in items[1:]:
                self.model.load_adapter(path, adapter_name=name)
            self.model.eval()
            self.names = [n for n, _ in items]

    @torch.no_grad()
    def logits(self, ids: list[int], adapter: str | None) -> torch.Tensor:
        """Logits [len(ids), vocab] of one sequence with `adapter` (None: the base model)."""
        x = torch.tensor([ids])
        if adapter is None:
            if self.names:
                with self.model.disable_adapter():
                    return self.model(input_ids=x).logits[0].float()
            return self.model(input_ids=x).logits[0].float()
        self.model.set_adapter(adapter)
        return self.model(input_ids=x).logits[0].float()

    def greedy(self, ids: list[int], adapter: str | None, n: int) -> tuple[list[int], list[float]]:
        """n greedy tokens (EOS ignored) and the log-probability of each."""
        seq, out, lps = list(ids), [], []
        for _ in range(n):
            lg = self.logits(seq, adapter)[-1]
            t = int(lg.argmax())
            lps.append(float(torch.log_softmax(lg, -1)[t]))
            out.append(t)
            seq.append(t)
        return out, lps
