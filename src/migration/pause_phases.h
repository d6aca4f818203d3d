// The source's record of the pause's phases: its own steps, and the destination's from its
// ACK, checked before they are believed (src/migration/stats.h has the phases themselves).
#pragma once

#include <string>
#include <vector>

#include "include/lmig/protocol.h"
#include "src/machine/state_timing.h"
#include "src/migration/stats.h"

namespace lmig {

Phase MakePhase(std::string name, std::string side, double ms);
// Per-vCPU and VM-wide parts, and the call groups, of a state save or restore, into P.
void AddStateParts(Phase& p, const StateTiming& t);
// Turns the destination's ACK phases DST (a guest of NUM_CPUS vCPUs) into pause phases
// covering the ACK wait (ACK_WAIT_MS; the COMPLETE's Send took COMPLETE_SEND_MS before it,
// the last phase in STATS), or says in STATS why they are missing.
void AddDestinationPhases(MigrationStats& stats, const std::vector<proto::PhaseTiming>& dst,
                          int num_cpus, double ack_wait_ms, double complete_send_ms);

}  // namespace lmig
