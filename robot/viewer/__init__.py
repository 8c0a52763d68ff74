"""Rerun views: stored episodes, live steps with policy internals, and training curves.

Stored episodes (:func:`log_episode`) and live steps (:class:`LiveLogger`) use one
entity layout, so one blueprint (:func:`episode_blueprint`) fits both::

    observation/images/<cam>      JPEG frames
    observation/pointcloud        3-D points
    observation/state/<name>      one scalar series per named dimension (any vector key alike)
    action/<name>/applied         the action the safety layer applied (key ``action``)
    action/<name>/commanded       the action asked for (key ``action.commanded``, when stored)
    reward/total, reward/<term>   keys ``reward`` and ``reward.<term>``
    flags/success|intervention|done
    safety/<name>                 per-step keys ``safety.<name>``
    events                        text log: success, takeover, hand-back, end, safety clamps
    episode                       metadata document (static)
    policy/denoising/<name>       denoising chain of the first action dimensions (line strips)
    policy/chunk_start, policy/q, policy/v

Timelines: ``step`` (sequence) and ``time`` (seconds); curves use ``train_step``.
Rerun is imported inside functions, so importing this package costs nothing. By job: :mod:`.layout`
(entity paths), :mod:`.episodes`, :mod:`.live`, :mod:`.blueprints`, :mod:`.curves`, :mod:`.transport`.
"""

from robot.viewer.blueprints import episode_blueprint, metrics_blueprint
from robot.viewer.curves import log_metrics, metric_keys
from robot.viewer.episodes import episode_markdown, log_episode
from robot.viewer.layout import dim_names, series_paths
from robot.viewer.live import LiveLogger
from robot.viewer.transport import RecordingSet, has_display, how_to_connect, merge_rrd, open_recording, served_url

__all__ = [
    "LiveLogger", "RecordingSet", "dim_names", "episode_blueprint", "episode_markdown", "has_display", "how_to_connect", "log_episode",
    "log_metrics", "merge_rrd", "metric_keys", "metrics_blueprint", "open_recording", "series_paths", "served_url",
]  # fmt: skip
