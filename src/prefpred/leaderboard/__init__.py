"""Model leaderboards from pairwise battles: Bradley-Terry ratings with bootstrap intervals and style control.

* :mod:`.battles` reads and checks battles (human votes, labelled pairs) into a :class:`~.battles.Battles` table;
* :mod:`.ratings` fits Bradley-Terry ratings on the Elo scale (evalica), bootstrap intervals, online Elo, win rates;
* :mod:`.style` fits ratings jointly with style differences (length, Markdown headers, lists, bold);
* :mod:`.predicted` turns a trained run's predictions into soft battles and compares two leaderboards;
* :mod:`.job` is ``prefpred leaderboard``: battles in, a run directory (``kind: leaderboard``) out.
"""

from prefpred.leaderboard.battles import Battles, make_battles, read_battles
from prefpred.leaderboard.ratings import Fit, fit_bt

__all__ = ["Battles", "Fit", "fit_bt", "make_battles", "read_battles"]
