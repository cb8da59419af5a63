/**
 * The run as a picture, in plain SVG (no dependency): above, the completion CDF (nodes done against time from
 * their own start, with one node alone marked); below, the registry's egress rate over simulated time.
 */
import type { ModelReport } from './types.js'

const W = 900
const PANEL_H = 260
const M = { left: 70, right: 20, top: 40, bottom: 45 }
const GAP = 30

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** about 5 round tick values from 0 to `max` */
function ticks (max: number): number[] {
  if (!(max > 0)) return [0]
  const raw = max / 5
  const mag = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 2.5, 5, 10].map(f => f * mag).find(x => x >= raw) ?? raw
  const out: number[] = []
  for (let v = 0; v <= max * 1.0001; v += step) out.push(Number(v.toPrecision(6)))
  return out
}

interface Panel { title: string, xLabel: string, yLabel: string, xMax: number, yMax: number, top: number, yFmt: (v: number) => string, xFmt: (v: number) => string }

function frame (p: Panel): { svg: string[], x: (v: number) => number, y: (v: number) => number } {
  const iw = W - M.left - M.right
  const ih = PANEL_H - M.top - M.bottom
  const x = (v: number): number => M.left + (p.xMax > 0 ? v / p.xMax : 0) * iw
  const y = (v: number): number => p.top + M.top + ih - (p.yMax > 0 ? v / p.yMax : 0) * ih
  const svg = [
    `<text x="${M.left}" y="${p.top + 22}" font-size="15" font-weight="bold">${esc(p.title)}</text>`,
    `<rect x="${M.left}" y="${p.top + M.top}" width="${iw}" height="${ih}" fill="none" stroke="#888"/>`
  ]
  for (const t of ticks(p.xMax)) {
    svg.push(`<line x1="${x(t).toFixed(1)}" y1="${p.top + M.top}" x2="${x(t).toFixed(1)}" y2="${p.top + M.top + ih}" stroke="#eee"/>`,
      `<text x="${x(t).toFixed(1)}" y="${p.top + M.top + ih + 16}" font-size="11" text-anchor="middle">${esc(p.xFmt(t))}</text>`)
  }
  for (const t of ticks(p.yMax)) {
    svg.push(`<line x1="${M.left}" y1="${y(t).toFixed(1)}" x2="${M.left + iw}" y2="${y(t).toFixed(1)}" stroke="#eee"/>`,
      `<text x="${M.left - 6}" y="${(y(t) + 4).toFixed(1)}" font-size="11" text-anchor="end">${esc(p.yFmt(t))}</text>`)
  }
  svg.push(`<text x="${M.left + iw / 2}" y="${p.top + PANEL_H - 6}" font-size="12" text-anchor="middle">${esc(p.xLabel)}</text>`,
    `<text x="16" y="${p.top + M.top + ih / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 16 ${p.top + M.top + ih / 2})">${esc(p.yLabel)}</text>`)
  return { svg, x, y }
}

export function modelChartSvg (r: ModelReport): string {
  const m = r.model
  const seconds = (v: number): string => `${(v / 1000).toFixed(v >= 10_000 ? 0 : 2).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '')} s`
  const cdfMax = Math.max(r.maxMs, m.aloneMs) * 1.05
  const cdf = frame({
    title: `Completion: ${m.completed} of ${m.nodes} nodes (p50 ${seconds(r.p50Ms)}, p99 ${seconds(r.p99Ms)}; one node alone ${seconds(m.aloneMs)})`,
    xLabel: 'time from the node\'s start',
    yLabel: 'nodes done',
    xMax: cdfMax,
    yMax: 100,
    top: 0,
    xFmt: seconds,
    yFmt: v => `${v}%`
  })
  const pts = [[0, 0], ...m.completionCdf].map(([t, k]) => `${cdf.x(t!).toFixed(1)},${cdf.y(100 * k! / m.nodes).toFixed(1)}`)
  cdf.svg.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="#1f77b4" stroke-width="2"/>`,
    `<line x1="${cdf.x(m.aloneMs).toFixed(1)}" y1="${cdf.y(0).toFixed(1)}" x2="${cdf.x(m.aloneMs).toFixed(1)}" y2="${cdf.y(100).toFixed(1)}" stroke="#d62728" stroke-dasharray="5,4"/>`,
    `<text x="${(cdf.x(m.aloneMs) + 4).toFixed(1)}" y="${(cdf.y(100) + 12).toFixed(1)}" font-size="11" fill="#d62728">one node alone</text>`)
  const bucket = m.registryTimeline.bucketMs
  const rates = m.registryTimeline.bytes.map(b => b / (bucket / 1000) / 1e6)
  const top = PANEL_H + GAP
  const rateMax = Math.max(m.registryBandwidth / 1e6, ...rates) * 1.05
  const egress = frame({
    title: `Registry egress: ${(r.registryBytes / 2 ** 30).toFixed(2)} GiB = ${m.registryRatio.toFixed(3)}x the image`,
    xLabel: 'simulated time',
    yLabel: 'MB/s',
    xMax: Math.max(bucket * rates.length, 1),
    yMax: rateMax,
    top,
    xFmt: seconds,
    yFmt: v => String(v)
  })
  const steps: string[] = []
  rates.forEach((v, i) => { steps.push(`${egress.x(i * bucket).toFixed(1)},${egress.y(v).toFixed(1)}`, `${egress.x((i + 1) * bucket).toFixed(1)},${egress.y(v).toFixed(1)}`) })
  egress.svg.push(`<polyline points="${steps.join(' ')}" fill="none" stroke="#2ca02c" stroke-width="1.5"/>`,
    `<line x1="${M.left}" y1="${egress.y(m.registryBandwidth / 1e6).toFixed(1)}" x2="${W - M.right}" y2="${egress.y(m.registryBandwidth / 1e6).toFixed(1)}" stroke="#888" stroke-dasharray="3,3"/>`,
    `<text x="${W - M.right - 4}" y="${(egress.y(m.registryBandwidth / 1e6) - 4).toFixed(1)}" font-size="11" text-anchor="end" fill="#555">registry cap</text>`)
  const height = 2 * PANEL_H + GAP
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif">`,
    `<rect width="${W}" height="${height}" fill="white"/>`,
    ...cdf.svg,
    ...egress.svg,
    '</svg>',
    ''
  ].join('\n')
}
