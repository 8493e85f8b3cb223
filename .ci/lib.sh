# shellcheck shell=bash
# Helpers shared by the lanes of .ci/run (sourced, from the repository root).

# The fenced ```bash block after "<!-- NAME -->" in README.md: the README is the one
# place the two commands for a fresh machine are written, and CI runs them from there.
readme_command() {
  local name=$1 cmd
  cmd=$(awk -v marker="<!-- $name -->" '
    $0 == marker {found=1; next}
    found && /^```bash/ {inblock=1; next}
    inblock && /^```/ {exit}
    inblock {print}' README.md)
  if [[ -z "$cmd" ]]; then
    echo "no $name block found in README.md" >&2
    return 1
  fi
  printf '%s\n' "$cmd"
}

# Copies the tracked and untracked-but-not-ignored files (no build outputs, no
# venvs) to DEST: what a fresh clone holds, plus uncommitted work when run by hand.
# Files deleted in the working tree but still in the index are skipped.
copy_tree() {
  local dest=$1 f
  mkdir -p "$dest"
  while IFS= read -r -d '' f; do
    if [[ -e "$f" ]]; then cp --parents "$f" "$dest"; fi
  done < <(git ls-files -z --cached --others --exclude-standard)
}
