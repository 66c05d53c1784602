"""The dashboard's own script and style (Plotly itself is served from the installed plotly package)."""

DASHBOARD_JS = """\
"use strict";
document.querySelectorAll("[data-figure]").forEach(function (div) {
  var spec = JSON.parse(document.getElementById(div.dataset.figure).textContent);
  Plotly.newPlot(div, spec.data, spec.layout, {responsive: true, displaylogo: false});
});
"""

DASHBOARD_CSS = """\
body { font-family: system-ui, sans-serif; margin: 0; color: #1f2933; background: #f5f7fa; }
header { background: #243b53; color: #fff; padding: 12px 24px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #bcccdc; font-size: 14px; }
main { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; padding: 16px 24px; }
section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 16px; margin: 0 0 8px; }
.chart { height: 340px; }
.chart.device-chart { height: auto; }
header a { color: #bcccdc; }
#notes { margin: 0 0 8px; padding-left: 18px; font-size: 13px; color: #52606d; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e4e7eb; }
th { color: #52606d; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { padding: 1px 6px; border-radius: 8px; font-size: 12px; }
.status-active { background: #c6f7e2; color: #014d40; }
.status-idle { background: #fff3c4; color: #8d2b0b; }
.status-unknown { background: #e4e7eb; color: #3e4c59; }
.reason { padding: 1px 6px; border-radius: 8px; font-size: 12px; }
.reason-rule { background: #ffe3e3; color: #8a041a; }
.reason-model { background: #dceefb; color: #0b4f8a; }
.empty { color: #7b8794; font-style: italic; }
"""
