#!/usr/bin/env bash
# The field app demo's scripted scenario in one command: starts a fieldsync-server, enrolls three
# phones, records offline on all of them (check-ins, survey edits that conflict, household
# visits), syncs, prints what each phone shows and the server's merged records, resolves the
# conflict. Exits non-zero if any check fails. Needs bindings/install-deps.sh to have run.
#
#   bash mobile-demo/run-scenario.sh
exec bash "$(dirname "$0")/run.sh" --scenario
