"""A tiny network with the paper's op kinds (3x3 conv, GroupNorm, softmax attention, GELU), as source
text: the Android tests and bench/parallel.py convert it to a small .tflite for the benchmark_model
stand-in (one source, so both share one cached file). GPU-clean: its GroupNorm is written out as the
harness exports it (torch's GroupNorm lowers with BROADCAST_TO, which LiteRT's GPU engine refuses), so
the stand-in runs it wholly on the GPU accelerator. BROADCAST_SRC is one that is not: an expand
feeding a reshape."""

BLOCK_SRC = '''
import torch
class Block(torch.nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.gamma, self.beta = torch.nn.Parameter(torch.ones(c)), torch.nn.Parameter(torch.zeros(c))
        self.q, self.k, self.v = (torch.nn.Linear(c, c) for _ in range(3))
        self.ff = torch.nn.Linear(c, c)
    def forward(self, x):
        h = self.conv(x)
        b, c, hh, ww = h.shape
        g = h.reshape(b, 2, -1)
        g = g - g.mean(-1, keepdim=True)
        g = g * torch.rsqrt((g * g).mean(-1, keepdim=True) + 1e-5)
        h = g.reshape(b, c, hh, ww) * self.gamma.reshape(1, c, 1, 1) + self.beta.reshape(1, c, 1, 1)
        t = h.reshape(b, c, hh * ww).transpose(1, 2)
        a = torch.softmax(self.q(t) @ self.k(t).transpose(1, 2) / c ** 0.5, dim=-1) @ self.v(t)
        t = t + torch.nn.functional.gelu(self.ff(a))
        return x + t.transpose(1, 2).reshape(b, c, hh, ww)
'''

BROADCAST_SRC = '''
import torch
class Block(torch.nn.Module):
    def forward(self, x):
        b = x.shape[0]
        return x + x.mean((1, 2, 3)).reshape(b, 1).expand(b, 8).reshape(b, 8, 1, 1)
'''
