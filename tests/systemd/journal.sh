# journal.sh: issue 14's journal checks (priorities, per-slot tags), sourced by run.sh after the
# broken-release check (t_broken) left a rollback in the journal. Uses run.sh's sx/ok/bad.

t_journal_priorities() {
  local u=handoff@demo.service errs own pids
  # handoff's ERROR lines are priority 3: `journalctl -p err` finds the rollback.
  errs=$(sx journalctl --no-pager -o cat -u $u -p err)
  if grep -q 'rolled back' <<<"$errs"; then
    ok "journal priorities: -p err finds the rollback: '$(grep -m1 'rolled back' <<<"$errs" | cut -c1-120)'"
  else bad "journal priorities: -p err lacks the rollback line:"; head -5 <<<"$errs" | sed 's/^/      /'; fi
  # ... and INFO lines are not errors.
  if grep -q 'INFO ' <<<"$errs"; then bad "journal priorities: INFO lines filed at err"; else ok "journal priorities: no INFO line under -p err ($(wc -l <<<"$errs") err lines)"; fi
  # The prefix is consumed by journald: no '<6>' and no leading space left in handoff's lines.
  own=$(sx journalctl --no-pager -o cat -u $u -t handoff)
  if [ -n "$own" ] && ! grep -qE '^ |^<[0-9]>' <<<"$own"; then
    ok "journal: handoff's lines have no leading space or <N> left ($(wc -l <<<"$own") lines)"
  else bad "journal: handoff's lines keep a prefix or a space:"; grep -m3 -E '^ |^<[0-9]>' <<<"$own" | sed 's/^/      /'; fi
  # A worker's own stderr stays info unless it says otherwise (SyslogLevelPrefix semantics).
  # Its line itself, not handoff's rollback line, which may quote the worker's last STATUS=
  # ("crashing at start, as asked") when that datagram was read before the exit.
  local all; all=$(sx journalctl --no-pager -o cat -u $u -p info)
  if ! grep -q '^example-worker: crashing at start' <<<"$all"; then bad "journal: the crashed worker's stderr line is missing"
  elif grep -q '^example-worker: crashing at start' <<<"$errs"; then bad "journal: the worker's plain stderr was filed at err"
  else ok "journal: the crashed worker's plain output is not raised to err (it is at info)"; fi
  # One slot followed across generations: identifier PROGRAM@wSLOT, several pids over rollovers.
  pids=$(sx journalctl --no-pager -o json -u $u -t handoff-example-worker@w0 | grep -o '"_PID":"[0-9]*"' | sort -u | wc -l)
  if [ "$pids" -ge 2 ]; then ok "journal: -t handoff-example-worker@w0 follows slot 0 across $pids worker pids (generations)"
  else bad "journal: -t handoff-example-worker@w0 shows $pids pid(s); expected one per generation"; fi
}
