"""A tiny network with the paper's op kinds (3x3 conv, GroupNorm, softmax attention, GELU), as source
text: the Android tests and bench/parallel.py convert it to a small .tflite for the benchmark_model
stand-in (one source, so both share one cached file)."""

BLOCK_SRC = '''
import torch
class Block(torch.nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, c)
        self.q, self.k, self.v = (torch.nn.Linear(c, c) for _ in range(3))
        self.ff = torch.nn.Linear(c, c)
    def forward(self, x):
        h = self.norm(self.conv(x))
        b, c, hh, ww = h.shape
        t = h.reshape(b, c, hh * ww).transpose(1, 2)
        a = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / c ** 0.5, dim=-1) @ self.v(t)
        t = t + torch.nn.functional.gelu(self.ff(a))
        return x + t.transpose(1, 2).reshape(b, c, hh, ww)
'''
