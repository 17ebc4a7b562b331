"""Quality experiments for issue 11 (prototype, transformers + hooks): selection x calibration x shape."""
import argparse, json, math, os, sys, time
import h5py, numpy as np, torch, transformers

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--train", required=True)
p.add_argument("--eval", required=True)
p.add_argument("--device", default="cuda")
p.add_argument("--out", default="results.jsonl")
p.add_argument("--only", default="")
a = p.parse_args()
dev = torch.device(a.device)
dt = torch.bfloat16
model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dt).to(dev).eval()
for q in model.parameters():
    q.requires_grad_(False)
cfg = model.config
L, H, KV, F, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.hidden_size
hd = cfg.head_dim
ids_train = torch.from_numpy(h5py.File(a.train)["input_ids"][...].astype(np.int64)).to(dev)
ids_eval = torch.from_numpy(h5py.File(a.eval)["input_ids"][...].astype(np.int64)).to(dev)
N = min(1024, ids_train.shape[0] - 64)
K = 64

# Teacher cache in memory: top-k logits (bf16-rounded, like the cache) and fp32 log-sum-exp.
t0 = time.time()
T_val, T_idx, T_lse = [], [], []
with torch.no_grad():
    for i in range(0, ids_train.shape[0], 32):
        lg = model(input_ids=ids_train[i:i + 32]).logits.float()
        T_lse.append(torch.logsumexp(lg, -1))
        v, ix = lg.topk(K, -1)
        T_val.append(v.to(torch.bfloat16).float()); T_idx.append(ix)
T_val, T_idx, T_lse = torch.cat(T_val), torch.cat(T_idx), torch.cat(T_lse)
print(json.dumps({"teacher_cache_s": time.time() - t0}), flush=True)


class Gates:
    head = None; ffn = None; row_o = None; row_d = None


gates = Gates()
for i, layer in enumerate(model.model.layers):
    def oh(mod, inp, i=i):
        return (inp[0] * gates.head[i].to(inp[0].dtype).repeat_interleave(hd),) if gates.head is not None else None

    def dh(mod, inp, i=i):
        return (inp[0] * gates.ffn[i].to(inp[0].dtype),) if gates.ffn is not None else None

    def oo(mod, inp, out, i=i):
        return out * gates.row_o[i].to(out.dtype) if gates.row_o is not None else None

    def do(mod, inp, out, i=i):
        return out * gates.row_d[i].to(out.dtype) if gates.row_d is not None else None
    layer.self_attn.o_proj.register_forward_pre_hook(oh)
    layer.mlp.down_proj.register_forward_pre_hook(dh)
    layer.self_attn.o_proj.register_forward_hook(oo)
    layer.mlp.down_proj.register_forward_hook(do)


def reset():
    gates.head = gates.ffn = gates.row_o = gates.row_d = None


def kl_loss(logits, s):
    lg = logits.float().reshape(-1, logits.shape[-1])
    v, ix, lse = T_val[s].reshape(-1, K), T_idx[s].reshape(-1, K), T_lse[s].reshape(-1)
    t_top = v - lse[:, None]
    t_tail = torch.log(torch.clamp_min(1 - t_top.exp().sum(-1, True), 1e-30))
    slse = torch.logsumexp(lg, -1, True)
    s_top = lg.gather(-1, ix) - slse
    s_tail = torch.log(torch.clamp_min(1 - s_top.exp().sum(-1, True), 1e-30))
    t = torch.cat([t_top, t_tail], -1); st = torch.cat([s_top, s_tail], -1)
    return (t.exp() * (t - st)).sum(-1).mean()


@torch.no_grad()
def eval_ppl(ids):
    tot, n = 0.0, 0
    for i in range(0, ids.shape[0], 32):
        x = ids[i:i + 32]
        lp = torch.log_softmax(model(input_ids=x).logits.float()[:, :-1], -1)
        tot += -lp.gather(-1, x[:, 1:, None]).sum().item(); n += x[:, 1:].numel()
    return math.exp(tot / n)


@torch.no_grad()
def heldout_kl():
    s = torch.arange(N, N + 64, device=dev)
    return sum(kl_loss(model(input_ids=ids_train[s[i:i + 32]]).logits, s[i:i + 32]).item() for i in (0, 32)) / 2


@torch.no_grad()
def activation_scores(windows=32):
    hs, fs = torch.zeros(L, H, device=dev), torch.zeros(L, F, device=dev)
    hk = []
    for i, layer in enumerate(model.model.layers):
        def f1(m, inp, i=i):
            fs[i].add_(inp[0].float().abs().reshape(-1, F).sum(0))
        def f2(m, inp, i=i):
            hs[i].add_(inp[0].float().reshape(-1, H, hd).norm(dim=-1).sum(0))
        hk.append(layer.mlp.down_proj.register_forward_pre_hook(f1))
        hk.append(layer.self_attn.o_proj.register_forward_pre_hook(f2))
    reset()
    for i in range(0, windows, 8):
        model(input_ids=ids_train[i:i + 8])
    for h in hk:
        h.remove()
    return hs, fs


def expected_ratio(kh, kf):
    per_head = 2 * D * hd
    return (kh.sum() * per_head + kf.sum() * 3 * D) / (L * H * per_head + L * F * 3 * D)


def learned_scores(steps, init, target, lr, mb=8, warm_frac=0.5, seed=3, noise=True):
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    if init is None:
        la_h, la_f = torch.full((L, H), 2.5, device=dev), torch.full((L, F), 2.5, device=dev)
    else:
        h0, f0 = init
        la_h = 5 * (h0.argsort(-1).argsort(-1).float() / (H - 1))
        la_f = 5 * (f0.argsort(-1).argsort(-1).float() / (F - 1))
    la_h.requires_grad_(True); la_f.requires_grad_(True)
    opt = torch.optim.Adam([la_h, la_f], lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    c = beta * math.log(-gamma / zeta)
    keep = lambda l: torch.sigmoid(l - c)
    for st in range(steps):
        tgt = 1 - (1 - target) * min(1, (st + 1) / max(1, int(steps * warm_frac)))
        s = torch.randint(0, N, (mb,), generator=gen).to(dev)
        def sample(l):
            if not noise:
                return (torch.sigmoid(l) * (zeta - gamma) + gamma).clamp(0, 1)
            u = torch.rand(l.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(dev)
            return (torch.sigmoid((torch.log(u) - torch.log1p(-u) + l) / beta) * (zeta - gamma) + gamma).clamp(0, 1)
        gates.head, gates.ffn = sample(la_h), sample(la_f)
        loss = kl_loss(model(input_ids=ids_train[s]).logits, s)
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            lo, hi = -40.0, 40.0
            for _ in range(40):
                mid = (lo + hi) / 2
                if expected_ratio(keep(la_h + mid), keep(la_f + mid)) < tgt: lo = mid
                else: hi = mid
            la_h += (lo + hi) / 2; la_f += (lo + hi) / 2
    reset()
    return la_h.detach(), la_f.detach()


def fisher_scores(samples, seed=1):
    gh = torch.ones(L, H, device=dev, requires_grad=True); gf = torch.ones(L, F, device=dev, requires_grad=True)
    gates.head, gates.ffn = gh, gf
    fh, ff = torch.zeros(L, H, device=dev), torch.zeros(L, F, device=dev)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for j in torch.randint(0, N, (samples,), generator=gen).tolist():
        lg = model(input_ids=ids_train[j:j + 1]).logits.float()[0]
        probs = (T_val[j] - T_lse[j][:, None]).exp()
        y = T_idx[j].gather(-1, torch.multinomial(probs / probs.sum(-1, True), 1))
        loss = -torch.log_softmax(lg, -1).gather(-1, y).sum()
        g1, g2 = torch.autograd.grad(loss, [gh, gf])
        fh += g1 ** 2; ff += g2 ** 2
    reset()
    return fh, ff


def select(hs, fs, heads, ffn, kv=KV):
    per = heads // kv
    mh, mf = torch.zeros(L, H, device=dev), torch.zeros(L, F, device=dev)
    q = H // KV
    for l in range(L):
        groups = []
        for g in range(KV):
            top = torch.topk(hs[l, g * q:(g + 1) * q], per).indices + g * q
            groups.append((hs[l, top].sum().item(), top))
        groups.sort(key=lambda t: -t[0])
        for _, top in groups[:kv]:
            mh[l, top] = 1
        mf[l, torch.topk(fs[l], ffn).indices] = 1
    return mh, mf


def calibrate(mh, mf, steps, lr, rows, mb=8, seed=2, init_h=None, init_f=None):
    sh = (init_h.clone() if init_h is not None else torch.ones(L, H, device=dev)).requires_grad_(True)
    sf = (init_f.clone() if init_f is not None else torch.ones(L, F, device=dev)).requires_grad_(True)
    params = [sh, sf]
    ro = rd = None
    if rows:
        ro = torch.ones(L, D, device=dev, requires_grad=True); rd = torch.ones(L, D, device=dev, requires_grad=True)
        params += [ro, rd]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for st in range(steps):
        s = torch.randint(0, N, (mb,), generator=gen).to(dev)
        gates.head, gates.ffn = sh * mh, sf * mf
        if rows:
            gates.row_o, gates.row_d = ro, rd
        f = min(1, (st + 1) / 10) * 0.5 * (1 + math.cos(math.pi * st / steps))
        for g_ in opt.param_groups:
            g_["lr"] = lr * f
        loss = kl_loss(model(input_ids=ids_train[s]).logits, s)
        opt.zero_grad(); loss.backward(); opt.step()
    gates.head, gates.ffn = (sh * mh).detach(), (sf * mf).detach()
    if rows:
        gates.row_o, gates.row_d = ro.detach(), rd.detach()


out = open(a.out, "a")
dense = {"exp": "dense", "ppl": eval_ppl(ids_eval)}
print(json.dumps(dense), flush=True); out.write(json.dumps(dense) + "\n")
act = activation_scores()


SCALE = float(os.environ.get("EXP_STEPS_SCALE", "1"))


def run(name, heads, ffn, select_with, calib_steps=0, calib_lr=0.01, rows=False, kv=KV, **kw):
    if a.only and not any(x in name for x in a.only.split(",")):
        return
    calib_steps = int(calib_steps * SCALE)
    if "steps" in kw:
        kw["steps"] = max(1, int(kw["steps"] * SCALE))
    if "samples" in kw:
        kw["samples"] = max(1, int(kw["samples"] * SCALE))
    t0 = time.time()
    torch.manual_seed(0)
    if select_with == "activation": hs, fs = act
    elif select_with == "magnitude":
        hs = torch.stack([l.self_attn.o_proj.weight.float().view(D, H, hd).norm(dim=(0, 2)) for l in model.model.layers])
        fs = torch.stack([l.mlp.down_proj.weight.float().norm(dim=0) * l.mlp.up_proj.weight.float().norm(dim=1) *
                          l.mlp.gate_proj.weight.float().norm(dim=1) for l in model.model.layers])
    elif select_with == "fisher": hs, fs = fisher_scores(kw.get("samples", 96))
    elif select_with == "act_fisher":
        h2, f2 = fisher_scores(kw.get("samples", 96))
        hs = act[0] / act[0].mean(-1, True) * (h2 / h2.mean(-1, True)).sqrt()
        fs = act[1] / act[1].mean(-1, True) * (f2 / f2.mean(-1, True)).sqrt()
    elif select_with.startswith("learned"):
        init = act if select_with == "learned_act" else None
        hs, fs = learned_scores(kw.get("steps", 100), init, kw.get("target", 0.53), kw.get("lr", 0.1),
                                noise=kw.get("noise", True), warm_frac=kw.get("warm_frac", 0.5))
    mh, mf = select(hs, fs, heads, ffn, kv)
    reset(); gates.head, gates.ffn = mh, mf
    r = {"exp": name, "heads": heads, "kv": kv, "ffn": ffn, "select": select_with, "ppl_masked": eval_ppl(ids_eval),
         "kl_masked": heldout_kl()}
    if calib_steps:
        calibrate(mh, mf, calib_steps, calib_lr, rows)
        r.update({"calib_steps": calib_steps, "calib_lr": calib_lr, "rows": rows, "ppl": eval_ppl(ids_eval),
                  "kl": heldout_kl()})
    r["seconds"] = time.time() - t0
    r.update({k: v for k, v in kw.items()})
    reset()
    print(json.dumps(r), flush=True); out.write(json.dumps(r) + "\n"); out.flush()


run("act", 9, 640, "activation")
run("mag", 9, 640, "magnitude")
run("act+cal100", 9, 640, "activation", 100)
run("act+cal100rows", 9, 640, "activation", 100, rows=True)
run("act+cal100rows-lr03", 9, 640, "activation", 100, 0.03, rows=True)
run("act+cal200rows", 9, 640, "activation", 200, rows=True)
run("learned100+cal100rows", 9, 640, "learned", 100, rows=True, steps=100)
run("learnedact100+cal100rows", 9, 640, "learned_act", 100, rows=True, steps=100)
run("learnedact100-det+cal100rows", 9, 640, "learned_act", 100, rows=True, steps=100, noise=False)
run("fisher+cal100rows", 9, 640, "fisher", 100, rows=True, samples=96)
run("actfisher+cal100rows", 9, 640, "act_fisher", 100, rows=True, samples=96)
run("s6x768-act+cal100rows", 6, 768, "activation", 100, rows=True)
run("s3x896-act+cal100rows", 3, 896, "activation", 100, rows=True)
run("t50-s9x128-act+cal100rows", 9, 128, "activation", 100, rows=True)
run("t50-s6x256-act+cal100rows", 6, 256, "activation", 100, rows=True)
run("t50-s3x384-act+cal100rows", 3, 384, "activation", 100, rows=True)
run("t50-s6x256-learnedact+cal100rows", 6, 256, "learned_act", 100, rows=True, steps=100, target=0.27)
run("learnedact150+cal50rows", 9, 640, "learned_act", 50, rows=True, steps=150)
run("learnedact100-lr03+cal100rows", 9, 640, "learned_act", 100, rows=True, steps=100, lr=0.3)
run("t50-s3x384-learnedact+cal100rows", 3, 384, "learned_act", 100, rows=True, steps=100, target=0.25)
run("X-actfisher+cal100rows-lr03", 9, 640, "act_fisher", 100, 0.03, rows=True, samples=96)
run("X-t50-s9x128-actfisher+cal100rows-lr03", 9, 128, "act_fisher", 100, 0.03, rows=True, samples=96)
run("X-t50-s6x256-actfisher+cal100rows-lr03", 6, 256, "act_fisher", 100, 0.03, rows=True, samples=96)
run("X-s6x768-actfisher+cal100rows-lr03", 6, 768, "act_fisher", 100, 0.03, rows=True, samples=96)
