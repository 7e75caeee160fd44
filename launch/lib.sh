# Checks shared by the launchers (sourced after the caller defines `die` and REPO).

# reject_set_flags WHAT FLAG...: the launcher sets these trainer flags itself; refuse them in FLAG...
reject_set_flags() {
  local what="$1" a
  shift
  for a in "$@"; do
    case "$a" in
      --workdir*|--coordinator_address*|--num_processes*|--process_id*|--multihost*)
        die "$what $a: the script sets it";;
    esac
  done
}

# require_config: $CONFIG (path.py[:args]) names a file of the repository.
require_config() {
  local cfg_file="${CONFIG%%:*}"
  [[ -f "$REPO/$cfg_file" ]] || die "CONFIG=$CONFIG: $cfg_file not found in $REPO"
}
