#!/usr/bin/env bash
# Cuts a small seed corpus for the fuzz targets from the real files in ../shared/data (a few
# dozen records and sentences) plus hand-made edge cases, into fuzz/corpus/<target>/.
# The corpus is not committed (fuzz/.gitignore); rerun this after a fresh checkout.
set -euo pipefail
cd "$(dirname "$0")"
data="${MEDTUNE_DATA:-../../shared/data}"
chemprot="$data/chemprot/both_rel_instruct_raw.jsonl"
chatdoctor="$data/chatdoctor/chatdoctor5k.json"
bc5cdr="$data/bc5cdr/train.tsv"
for f in "$chemprot" "$chatdoctor" "$bc5cdr"; do
  [ -f "$f" ] || { echo "error: $f is missing (set MEDTUNE_DATA)" >&2; exit 1; }
done
mkdir -p corpus/json_framing corpus/json_records corpus/conll

python3 - "$chemprot" "$chatdoctor" "$bc5cdr" <<'PY'
import json, sys
chemprot, chatdoctor, bc5cdr = sys.argv[1:]

def put(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)

def cut(text, n=700):
    """Short strings keep the fuzzer fast; the shape is what matters."""
    return text if len(text) <= n else text[:n]

# ChemProt JSON lines: single lines, groups of lines (records shortened to <= 700 chars).
lines = open(chemprot, encoding="utf-8").read().splitlines()
rows = []
for i in range(0, 3000, 250):
    r = json.loads(lines[i])
    rows.append({"prompt": cut(r["prompt"]), "completion": cut(r["completion"], 200)})
for i, r in enumerate(rows):
    put("json_records", f"chemprot_{i:02}", json.dumps(r))
    put("json_framing", f"chemprot_{i:02}", json.dumps(r) + "\n")
put("json_framing", "chemprot_lines", "\n".join(json.dumps(r) for r in rows[:4]) + "\n")
put("json_framing", "chemprot_lines_crlf_blank", "\r\n\r\n".join(json.dumps(r) for r in rows[4:7]) + "\r\n")
put("json_records", "chemprot_lines", "\n".join(json.dumps(r) for r in rows[:3]) + "\n")

# ChatDoctor alpaca JSON array: elements alone, pretty and minified arrays.
arr = json.load(open(chatdoctor, encoding="utf-8"))
els = [{k: cut(v, 300) for k, v in arr[i].items()} for i in range(0, 5452, 500)]
for i, e in enumerate(els):
    put("json_records", f"chatdoctor_{i:02}", json.dumps(e, indent=6))
    put("json_framing", f"chatdoctor_{i:02}", "[\n" + json.dumps(e, indent=6) + "\n]\n")
put("json_framing", "chatdoctor_array_pretty", json.dumps(els[:3], indent=6))
put("json_framing", "chatdoctor_array_min", json.dumps(els[3:6], separators=(",", ":")))
put("json_records", "chatdoctor_array", json.dumps(els[6:8], indent=2))

# BC5CDR CoNLL sentences: single sentences and runs of a few.
text = open(bc5cdr, encoding="utf-8").read()
sents = [s for s in text.split("\n\n") if s.strip()]
for i in range(0, min(len(sents), 4000), 160):
    put("conll", f"bc5cdr_{i:04}", sents[i] + "\n")
put("conll", "bc5cdr_three", "\n\n".join(sents[10:13]) + "\n\n")
put("conll", "bc5cdr_docstart", "-DOCSTART-\tO\n\n" + "\n\n".join(sents[20:22]) + "\n")

# BIO JSON records built from the same sentences.
for i in range(0, 4):
    pairs = [l.split("\t") for l in sents[i * 7].splitlines()][:12]
    put("json_records", f"bio_labels_{i}", json.dumps({"text": " ".join(p[0] for p in pairs),
        "labels": [{"word": p[0], "entity": p[1]} for p in pairs]}))
    put("json_records", f"bio_lists_{i}", json.dumps({"id": i, "tokens": [p[0] for p in pairs],
        "ner_tags": [p[1] for p in pairs]}))

# Hand-made edge cases.
bom = "\ufeff"
for name, data in {
    "empty": "", "ws": " \n\t\r\n", "empty_array": "[ ]", "nested": '[{"a":[1,{"b":"]"}]},{"c":"\\"x,"}]',
    "trailing_comma": '[{"a":1},]', "double_comma": '[{"a":1},,{"b":2}]', "unclosed": '[{"a":1},\n{"a":',
    "trailing_data": '[{"a":1}]\n{"b":2}', "bom_array": bom + '[{"a":1}]', "bom_lines": bom + '{"a":1}\n{"b":2}',
    "scalars": '[1, "x", null, true, -2.5e3]', "lines_scalars": '1\n"x"\n\nnull\n', "long": '[' + '{"k":"' + 'x' * 200 + '"}]',
    "space_before_comma": '[{"a":"' + 'y' * 56 + '"}         ,{}]', "crlf_long_line": '{"a":"' + 'z' * 56 + '"}\r\n',
    "escapes": '["\\u005d\\\\", "\\"]"]', "deep": "[" * 40 + "]" * 40,
}.items():
    put("json_framing", f"edge_{name}", data)
for name, data in {
    "pc_null": '{"prompt": "x", "completion": null}', "pc_missing": '{"prompt": "x"}',
    "pc_dup": '{"prompt": "a", "prompt": "b", "completion": "c"}', "pc_escapes": '{"prompt": "\\u00e9\\n\\n", "completion": "\\ud83d\\ude00"}',
    "alpaca_no_input": '{"instruction": "Q?", "output": "A"}', "alpaca_null_input": '{"instruction": "Q", "input": null, "output": "A"}',
    "bio_mismatch": '{"words": ["a", "b"], "tags": ["O"]}', "bio_bad_seq": '{"words": ["a", "b"], "tags": ["O", "I-Disease"]}',
    "bio_unknown_type": '{"tokens": ["a"], "ner_tags": ["B-Gene"]}', "bio_float_id": '{"id": 1.5, "words": ["a"], "tags": ["O"]}',
    "bio_empty_word": '{"labels": [{"word": "", "entity": "O"}]}', "not_object": "[1, 2]", "bad_utf8": b'{"prompt": "\xff", "completion": "y"}',
    "big_number": '{"prompt": "p", "completion": "c", "n": 1e400}', "bom": bom + '{"prompt": "p", "completion": "c"}',
}.items():
    put("json_records", f"edge_{name}", data)
for name, data in {
    "empty": "", "blank_only": "\n \t\n\r\n", "no_tab": "a\tO\nno tab\nc\tO\n", "three_cols": "a\tNN\tO\n",
    "crlf": "a\tB-Chemical\r\nb\tI-Chemical\r\n\r\n", "bad_seq": "a\tO\nb\tI-Disease\n", "bom": bom + "a\tO\n",
    "bom_docstart": bom + "-DOCSTART-\tO\n\na\tO\n", "docstart_mid": "a\tO\n-DOCSTART-\tO\nb\tO\n",
    "long_sentence": "".join(f"w{i}\tO\n" for i in range(8)), "bad_utf8": b"a\xff\tO\n", "empty_fields": "\tO\na\t \n",
    "form_feed": "a\tO\n\x0c\nb\tO", "unknown_type": "a\tB-Gene\n", "repair": "a\tO\nb\tI-Chemical\nc\tI-Chemical\n",
}.items():
    put("conll", f"edge_{name}", data)
PY
for t in json_framing json_records conll; do
  echo "$t: $(ls "corpus/$t" | wc -l) files, $(du -sk "corpus/$t" | cut -f1) KiB"
done
