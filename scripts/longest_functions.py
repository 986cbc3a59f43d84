#!/usr/bin/env python3
"""Lists the longest Rust functions under a folder (default `src/`), by line count.

Usage: longest_functions.py [FOLDER] [N]

A function is counted from its `fn` line to the line closing its body (brace matching that
skips strings, chars and comments well enough for this codebase). Test modules count too.
"""
import re
import sys
from pathlib import Path

FN = re.compile(r'^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)')


def functions(path: Path):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split('//')[0])
            code = re.sub(r"'(\\.|[^'\\])'", "''", code)
            for ch in code:
                if ch == '{':
                    depth += 1
                    started = True
                elif ch == '}':
                    depth -= 1
            if started and depth <= 0:
                break
            if not started and code.rstrip().endswith(';'):
                break  # a declaration without a body
            j += 1
        if started:
            yield m.group(1), i + 1, j - i + 1
        i += 1


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else 'src')
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    found = [(length, f"{p}:{line}", name) for p in sorted(root.rglob('*.rs')) for name, line, length in functions(p)]
    for length, where, name in sorted(found, reverse=True)[:n]:
        print(f"{length:5d}  {name:<32} {where}")


if __name__ == '__main__':
    main()
