"""The money domain, pure: counters -> deltas (``sessions``), tariffs, off-peak splits,
quota and overage (``tariff``), quota policies and the actions they cause (``policies``),
rating state per subscriber shard (``shards``), billing cycles (``cycles``), money
rounding (``money``); snapshots that cost what changed (``snapshots``).

No I/O, no clock, no stream framework: data in, data out. (The hot modules may run as
compiled builds of the same source: ``rating._compiled``.)
"""

from rating._compiled import use_matching_builds

use_matching_builds(__name__, __path__[0])  # before the modules below are imported

from rating.cycles import Cycle, cycle_at
from rating.money import overage_charge, round_money
from rating.policies import QuotaAction, QuotaPolicy, rate_and_enforce
from rating.sessions import (
    AcctRecord,
    NasState,
    SessionDelta,
    SessionSnapshot,
    event_time,
    record_id,
    total,
)
from rating.shards import SubscriberShard
from rating.tariff import (
    OffPeakWindow,
    Plan,
    RatedPiece,
    SubscriberUsage,
    Tariff,
    split_span,
)

__all__ = [
    "AcctRecord", "Cycle", "NasState", "OffPeakWindow", "Plan", "QuotaAction", "QuotaPolicy",
    "RatedPiece", "SessionDelta", "SessionSnapshot", "SubscriberShard", "SubscriberUsage",
    "Tariff", "cycle_at",
    "event_time", "overage_charge", "rate_and_enforce", "record_id", "round_money",
    "split_span", "total",
]
