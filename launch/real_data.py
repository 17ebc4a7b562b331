"""English text from Debian packages, cut into token windows for the real-model tests and benchmarks
(outside git, under models/data/). Idempotent; each file is written to a temporary name and renamed.

    python launch/real_data.py [--models models]

Text (installed by launch/setup.sh as Debian packages; the Python documentation is never used: it is
kept for independent acceptance):
  train: debian-policy (the Policy Manual and its companions, text), developers-reference (reST
         sources), debian-reference-en (HTML, tags stripped)   -> models/data/corpus-train/*.txt
  eval:  gnu-standards (GNU Coding Standards and Information for Maintainers of GNU Software, text):
         a different document set                               -> models/data/corpus-eval/*.txt
  heal:  perl-doc (the Perl manual pages, POD markup stripped; the release deltas left out): more
         distinct text for heal.data than the gate stages use   -> models/data/corpus-heal/*.txt
One file per document. For SmolLM2 (models/smollm2-135m) the token files are
  models/data/smollm2-train-256.h5   1,104 windows of 256 tokens (1,024 to train on + 80 held out)
  models/data/smollm2-eval-256.h5    64 windows of 256 tokens of the eval document set
  models/data/smollm2-heal-256.h5    8,192 windows of 256 tokens (2.1 M tokens) of the heal text
  models/data/smollm2-heal-4m-256.h5 16,384 windows of 256 tokens (4.2 M distinct tokens): the heal text and the
                                     Perl release notes (perl5*delta), for heals of 2 M tokens and more
For Gemma-3-270M (models/gemma-3-270m) the same three from the same text, each window led by BOS (id 2):
  models/data/gemma3-train-256.h5    1,104 windows of 256 tokens (1,024 to train on + 80 held out)
  models/data/gemma3-eval-256.h5     64 windows of 256 tokens of the eval document set
  models/data/gemma3-heal-256.h5     8,192 windows of 256 tokens of the heal text
For all-MiniLM-L6-v2 (models/all-minilm-l6-v2), one padded sentence per sample (prepare_tokens.py --sentences):
  models/data/minilm-train-64.h5     4,352 sentences of the train text (4,096 to train on + 256 held out)
  models/data/minilm-eval-64.h5      512 sentences of the eval document set
"""
import argparse
import glob
import gzip
import html.parser
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


class _Text(html.parser.HTMLParser):
    SKIP = {"script", "style", "head", "title"}

    def __init__(self):
        super().__init__()
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "pre", "tr", "dt", "dd"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_text(path):
    p = _Text()
    p.feed(open(path, encoding="utf-8", errors="replace").read())
    return "".join(p.parts)


def pod_text(text):
    """POD to plain text: directives dropped (headings kept as lines), formatting codes unwrapped."""
    out = []
    for line in text.splitlines():
        if line.startswith("=head") or line.startswith("=item"):
            out.append(line.split(None, 1)[1] if " " in line else "")
        elif line.startswith("="):
            out.append("")
        else:
            out.append(line)
    text = "\n".join(out)
    for _ in range(3):  # nested codes
        text = re.sub(r"[A-Z]<<+\s*(.*?)\s*>>+", r"\1", text)
        text = re.sub(r"[A-Z]<([^<>]*)>", r"\1", text)
    return text


def read(path):
    if path.endswith(".pod"):
        return pod_text(open(path, encoding="utf-8", errors="replace").read())
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    if path.endswith(".html"):
        return html_text(path)
    return open(path, encoding="utf-8", errors="replace").read()


def tidy(text):
    text = text.replace("\r", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


SOURCES = {
    "train": ["/usr/share/doc/debian-policy/*.txt.gz",
              "/usr/share/developers-reference/_sources/*.rst.txt",
              "/usr/share/debian-reference/*.en.html"],
    "eval": ["/usr/share/doc/gnu-standards/*.text.gz"],
    "heal": ["/usr/share/perl/5.*/pod/perl[!5]*.pod"],
    # The heal text and the release notes of every Perl 5 version (perl5*delta): > 4 M distinct tokens, so that a
    # heal of 2 M tokens and more reads each window once (bench/depth.sh's long heals).
    "heal-4m": ["/usr/share/perl/5.*/pod/perl[!5]*.pod", "/usr/share/perl/5.*/pod/perl5*delta.pod"],
}


def write_corpus(out_dir, patterns):
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        return out_dir
    files = sorted(f for pat in patterns for f in glob.glob(pat))
    if not files:
        raise SystemExit(f"real_data.py: none of {patterns} exists (launch/setup.sh installs the Debian packages)")
    tmp = out_dir + ".partial"
    os.makedirs(tmp, exist_ok=True)
    for i, f in enumerate(files):
        name = f"{i:03d}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(f)) + ".txt"
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as o:
            o.write(tidy(read(f)))
    os.replace(tmp, out_dir)
    return out_dir


def tokens(model, corpus, out, seq_len, samples, *extra):
    if os.path.exists(out):
        return
    subprocess.run([sys.executable, os.path.join(HERE, "prepare_tokens.py"), model, corpus, out,
                    "--seq-len", str(seq_len), "--samples", str(samples), *extra], check=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=os.path.join(HERE, "..", "models"))
    a = p.parse_args()
    data = os.path.join(os.path.abspath(a.models), "data")
    os.makedirs(data, exist_ok=True)
    train = write_corpus(os.path.join(data, "corpus-train"), SOURCES["train"])
    evalc = write_corpus(os.path.join(data, "corpus-eval"), SOURCES["eval"])
    healc = write_corpus(os.path.join(data, "corpus-heal"), SOURCES["heal"])
    smol = os.path.join(os.path.abspath(a.models), "smollm2-135m")
    if os.path.exists(os.path.join(smol, "tokenizer.json")):
        tokens(smol, train, os.path.join(data, "smollm2-train-256.h5"), 256, 1104)
        tokens(smol, evalc, os.path.join(data, "smollm2-eval-256.h5"), 256, 64)
        tokens(smol, healc, os.path.join(data, "smollm2-heal-256.h5"), 256, 8192)
        heal4m = write_corpus(os.path.join(data, "corpus-heal-4m"), SOURCES["heal-4m"])
        tokens(smol, heal4m, os.path.join(data, "smollm2-heal-4m-256.h5"), 256, 16384)
    gemma = os.path.join(os.path.abspath(a.models), "gemma-3-270m")
    if os.path.exists(os.path.join(gemma, "tokenizer.json")):
        tokens(gemma, train, os.path.join(data, "gemma3-train-256.h5"), 256, 1104)
        tokens(gemma, evalc, os.path.join(data, "gemma3-eval-256.h5"), 256, 64)
        tokens(gemma, healc, os.path.join(data, "gemma3-heal-256.h5"), 256, 8192)
    minilm = os.path.join(os.path.abspath(a.models), "all-minilm-l6-v2")
    if os.path.exists(os.path.join(minilm, "tokenizer.json")):
        tokens(minilm, train, os.path.join(data, "minilm-train-64.h5"), 64, 4352, "--sentences")
        tokens(minilm, evalc, os.path.join(data, "minilm-eval-64.h5"), 64, 512, "--sentences")
    print(f"real data in {data}")


if __name__ == "__main__":
    main()
