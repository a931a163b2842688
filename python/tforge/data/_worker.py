"""Worker process for tokenize_to_shards(num_proc > 1): `python -m tforge.data._worker JOB.pkl`.

A plain subprocess rather than multiprocessing: spawn would re-run the user's
main script (breaking scripts without an `if __name__ == "__main__"` guard)
and fork is unsafe once the parent holds threads (torch, HF tokenizers).
The job (a pickled dict: work units, tokenizer, output paths) comes in a file;
the counts go out as JSON next to it.
"""
import json
import pickle
import sys


def main(job_path: str) -> int:
    from tforge.data.tokenize import _tokenize_part

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    result = _tokenize_part(job)
    with open(job_path + ".json", "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
