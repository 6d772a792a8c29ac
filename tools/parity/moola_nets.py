"""moola's three deep classifiers re-implemented in PyTorch (SimpleLSTM as of moola commit 7c9b1bb,
CNN-Transformer and RWKV-TS as of commit 6ecdb28), with the reference's module and attribute
names so that the state-dict keys are the reference's. Used by ``moola_fixtures.py`` to make
parity fixtures for the Rust port (crates/moola/src/model, crates/moola/src/import.rs).

* ``SimpleLSTMNet``: ``lstm`` -> ``attention`` (MHA, no mask) -> ``ln(out + attn)`` -> last
  step -> ``classifier`` = Sequential(Linear(H, 32), ReLU, Dropout, Linear(32, C)).
* ``CnnTransformerNet``: ``cnn_blocks.{i}.convs.{j}.conv``, ``.bn``, ``.residual``;
  window weighting x1.5; ``rel_pos_enc.rel_pos_emb`` (mean over key positions); buffer->inner
  additive mask; post-norm ``transformer``; inner-window mean pool -> ``output_norm`` -> dropout ->
  ``classifier``; optional ``pointer_start_head``/``pointer_end_head``.
* ``RWKVTSNet``: ``input_proj`` -> InstanceNorm1d (no affine) -> ``blocks.{i}`` with
  the previous block's last step as state (``window_mask`` buffer, x1.2 on the inner window, used
  only when T == 105) -> last step -> ``output_norm`` -> dropout -> ``classifier``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

WINDOW = 105
INNER_START, INNER_END = 30, 75


class SimpleLSTMNet(nn.Module):
    def __init__(self, input_dim, hidden_size, num_layers, num_heads, dropout, n_classes):
        super().__init__()
        self.lstm = nn.LSTM(
            input_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.ln = nn.LayerNorm(hidden_size)
        self.classifier = nn.Sequential(
            nn.Linear(hidden_size, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, n_classes)
        )

    def forward(self, x):
        out, _ = self.lstm(x)
        attn, _ = self.attention(out, out, out)
        x = self.ln(out + attn)
        return self.classifier(x[:, -1, :])


class CausalConv1d(nn.Module):
    def __init__(self, in_ch, out_ch, kernel, dropout):
        super().__init__()
        self.padding = kernel - 1
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, padding=0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.conv(F.pad(x, (self.padding, 0))))


class CNNBlock(nn.Module):
    def __init__(self, in_ch, out_ch, kernels, dropout):
        super().__init__()
        n = len(kernels)
        base, extra = divmod(out_ch, n)
        self.convs = nn.ModuleList(
            [CausalConv1d(in_ch, base + (1 if i < extra else 0), k, dropout) for i, k in enumerate(kernels)]
        )
        self.bn = nn.BatchNorm1d(out_ch)
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        out = torch.cat([c(x) for c in self.convs], dim=1)
        out = F.relu(self.bn(out))
        return out + self.residual(x)


class RelativePositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=512):
        super().__init__()
        self.max_len = max_len
        self.rel_pos_emb = nn.Parameter(torch.randn(2 * max_len - 1, d_model))

    def forward(self, seq_len):
        pos = torch.arange(seq_len, device=self.rel_pos_emb.device)
        rel = pos[None, :] - pos[:, None] + self.max_len - 1  # [i, j] -> j - i + 511
        return self.rel_pos_emb[rel]  # [T, T, d]


class WindowAwarePositionalEncoding(nn.Module):
    """x1.5 on the inner-window steps (no parameters, no buffers)."""

    def forward(self, x):
        w = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        w[INNER_START:INNER_END] = 1.5
        return x * w[None, :, None]


class CnnTransformerNet(nn.Module):
    def __init__(self, input_dim, n_classes, cnn_channels, cnn_kernels, transformer_layers,
                 transformer_heads, dropout, predict_pointers):
        super().__init__()
        self.predict_pointers = predict_pointers
        blocks, c_in = [], input_dim
        for c_out in cnn_channels:
            blocks.append(CNNBlock(c_in, c_out, cnn_kernels, dropout))
            c_in = c_out
        self.cnn_blocks = nn.ModuleList(blocks)
        d = cnn_channels[-1]
        self.window_pe = WindowAwarePositionalEncoding()
        self.rel_pos_enc = RelativePositionalEncoding(d)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=transformer_heads, dim_feedforward=4 * d, dropout=dropout,
            activation="relu", batch_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=transformer_layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d, n_classes)
        if predict_pointers:
            self.pointer_start_head = nn.Linear(d, 1)
            self.pointer_end_head = nn.Linear(d, 1)

    def forward(self, x):
        x = x.transpose(1, 2)
        for block in self.cnn_blocks:
            x = block(x)
        x = x.transpose(1, 2)  # [B, T, d]
        T = x.shape[1]
        x = self.window_pe(x)
        x = x + self.rel_pos_enc(T).mean(dim=1)[None]
        mask = torch.zeros(T, T, dtype=x.dtype, device=x.device)
        mask[:INNER_START, INNER_START:INNER_END] = float("-inf")
        mask[INNER_END:, INNER_START:INNER_END] = float("-inf")
        x = self.transformer(x, mask=mask)
        inner = x[:, INNER_START:INNER_END]
        logits = self.classifier(self.dropout(self.output_norm(inner.mean(dim=1))))
        if not self.predict_pointers:
            return logits
        return {
            "classification": logits,
            "start": self.pointer_start_head(inner).squeeze(-1),
            "end": self.pointer_end_head(inner).squeeze(-1),
        }


class RWKVBlock(nn.Module):
    def __init__(self, d, dropout):
        super().__init__()
        self.time_mix_k = nn.Parameter(torch.randn(1, 1, d))
        self.time_mix_v = nn.Parameter(torch.randn(1, 1, d))
        self.time_mix_r = nn.Parameter(torch.randn(1, 1, d))
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.channel_mix_k = nn.Parameter(torch.randn(1, 1, d))
        self.channel_mix_r = nn.Parameter(torch.randn(1, 1, d))
        self.ffn_key = nn.Linear(d, 4 * d, bias=False)
        self.ffn_value = nn.Linear(4 * d, d, bias=False)
        self.ffn_receptance = nn.Linear(d, d, bias=False)
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        mask = torch.ones(WINDOW)
        mask[INNER_START:INNER_END] = 1.2
        self.register_buffer("window_mask", mask)

    @staticmethod
    def _mix(a, b, mu):
        return a * mu + b * (1 - mu)

    def forward(self, x, state=None):
        B, T, d = x.shape
        if state is None:
            state = torch.zeros(B, 1, d, dtype=x.dtype, device=x.device)
        n = self.ln1(x)
        xx = torch.cat([state, n[:, :-1]], dim=1)
        k = self.key(self._mix(n, xx, self.time_mix_k))
        v = self.value(self._mix(n, xx, self.time_mix_v))
        r = self.receptance(self._mix(n, xx, self.time_mix_r))
        out = torch.sigmoid(r) * self.output(k * v)
        if T == WINDOW:
            out = out * self.window_mask[None, :, None]
        x = x + self.dropout(out)
        n2 = self.ln2(x)
        xx2 = torch.cat([state, n2[:, :-1]], dim=1)
        k2 = self.ffn_key(self._mix(n2, xx2, self.channel_mix_k))
        r2 = self.ffn_receptance(self._mix(n2, xx2, self.channel_mix_r))
        x = x + self.dropout(torch.sigmoid(r2) * self.ffn_value(torch.relu(k2) ** 2))
        return x, x[:, -1:]


class RWKVTSNet(nn.Module):
    def __init__(self, input_dim, n_classes, d_model, n_layers, dropout, instance_norm):
        super().__init__()
        self.use_instance_norm = instance_norm
        self.input_proj = nn.Linear(input_dim, d_model)
        self.norm = nn.InstanceNorm1d(d_model, affine=False, track_running_stats=False)
        self.blocks = nn.ModuleList([RWKVBlock(d_model, dropout) for _ in range(n_layers)])
        self.output_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, n_classes)

    def forward(self, x):
        x = self.input_proj(x)
        if self.use_instance_norm and x.shape[1] > 1:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        state = None
        for block in self.blocks:
            x, state = block(x, state)
        return self.classifier(self.dropout(self.output_norm(x[:, -1])))


class MaskedAutoencoderNet(nn.Module):
    """The masked BiLSTM autoencoder (``BiLSTMMaskedAutoencoder`` at 6ecdb28): ``mask_token``
    [1, 1, F], bidirectional ``encoder_lstm``, ``layer_norm`` (2H), ``decoder`` = Linear(2H, H),
    ReLU, Dropout, Linear(H, F). Loss: MSE over the masked steps + 0.1 * ReLU(1 - mean std of an extra
    encoder pass on the unmasked input)."""

    def __init__(self, input_dim=4, hidden_dim=128, num_layers=2, dropout=0.2):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(1, 1, input_dim) * 0.02)
        self.encoder_lstm = nn.LSTM(input_dim, hidden_dim, num_layers, batch_first=True,
                                    bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.layer_norm = nn.LayerNorm(2 * hidden_dim)
        self.decoder = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, input_dim),
        )

    def forward(self, x_masked):
        return self.decoder(self.layer_norm(self.encoder_lstm(x_masked)[0]))

    def mask(self, x, ratio=0.15, patch_size=7):
        """Patch masking: max(1, int(P * ratio)) of the P = T // patch_size patches per sample."""
        b, t, _ = x.shape
        n_patches = t // patch_size
        n_mask = max(1, int(n_patches * ratio))
        mask = torch.zeros(b, t, dtype=torch.bool)
        for i in range(b):
            for p in torch.randperm(n_patches)[:n_mask].tolist():
                mask[i, p * patch_size:min(p * patch_size + patch_size, t)] = True
        x_masked = x.clone()
        x_masked[mask] = self.mask_token.to(x.dtype).squeeze(0).squeeze(0)
        return x_masked, mask

    def loss(self, recon, x, mask):
        m = mask.unsqueeze(-1).expand_as(x)
        recon_loss = F.mse_loss(recon[m], x[m]) if m.any() else recon.sum() * 0.0
        enc = self.encoder_lstm(x)[0]
        latent_std = enc.reshape(-1, enc.shape[-1]).std(dim=0).mean()
        return recon_loss + 0.1 * F.relu(1.0 - latent_std)


class TSTCCNet(nn.Module):
    """TS-TCC (``models/ts_tcc.py`` at 6ecdb28): ``encoder`` = the CNN-Transformer's
    ``cnn_blocks`` + ``rel_pos_enc`` bias + post-norm ``transformer`` (no window weighting, no
    mask); mean over steps; ``projection_head`` = Linear(d, 128), LayerNorm, ReLU,
    Linear(128, 64)."""

    def __init__(self, input_dim=4, cnn_channels=(64, 128, 128), cnn_kernels=(3, 5, 9),
                 transformer_layers=3, transformer_heads=4, dropout=0.25, hidden=128, out=64):
        super().__init__()
        blocks, c_in = [], input_dim
        for c_out in cnn_channels:
            blocks.append(CNNBlock(c_in, c_out, list(cnn_kernels), dropout))
            c_in = c_out
        d = cnn_channels[-1]
        self.encoder = nn.Module()
        self.encoder.cnn_blocks = nn.ModuleList(blocks)
        self.encoder.rel_pos_enc = RelativePositionalEncoding(d)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=transformer_heads, dim_feedforward=4 * d, dropout=dropout,
            activation="relu", batch_first=True,
        )
        self.encoder.transformer = nn.TransformerEncoder(layer, num_layers=transformer_layers,
                                                         enable_nested_tensor=False)
        self.projection_head = nn.Sequential(
            nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out),
        )

    def forward(self, x):
        h = x.transpose(1, 2)
        for block in self.encoder.cnn_blocks:
            h = block(h)
        h = h.transpose(1, 2)
        h = h + self.encoder.rel_pos_enc(h.shape[1]).mean(dim=1)[None]
        h = self.encoder.transformer(h)
        return self.projection_head(h.mean(dim=1))


def info_nce(z1, z2, temperature=0.5):
    """NT-Xent over 2B embeddings, the diagonal set to -100 (the reference's ``info_nce_loss``)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), -100.0)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)
