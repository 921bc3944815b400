// s2pt: one run of a scenario, step by step.
//
// The one client-side renderer of a recorded run: the HTML trace
// (python -m s2pt replay ... --html) inlines this file, and the Interleave
// widget (an anywidget, s2pt.widgets.TraceView) loads it as its module.
// Python (s2pt.htmltrace.Frames) describes every step's panels as pieces of
// HTML, each stored once in a pool, and the shared-state table as deltas (a
// step stores only the rows it changed); this file puts a step's panels
// together, and steps through them: Prev / Next (skipping steps that change
// no shared state when "skip" is ticked), the violation, Play.
//
// The data: {pool: [string], steps: [step], keys: [section ref of each row
// id], names: [actor name], timeline: pool ref of the run's timeline SVG,
// xs: [the timeline cursor's x at each step]}.  A step is
//   [cols, shared, tree, event, banner, quiet]
//   cols:   per actor, the pool refs of its column's pieces; a negative ref
//           -1-j is the "last step" line, whose text is pool[j];
//   shared: [pool ref of the row ids in order, [[row id, cells ref, changed], ...]];
//   tree:   pool ref (-1: not drawn yet, the widget sends it when shown);
//   event:  a pool ref, or [actor, function, text, rest] refs;
//   banner: pool ref of "class|text";  quiet: 1 if it changed no shared state.

export async function unpack(b64) {
  // Gzipped JSON in base64, unpacked by the browser itself: nothing is fetched.
  const bin = Uint8Array.from(atob(b64.trim()), c => c.charCodeAt(0));
  const stream = new Blob([bin]).stream().pipeThrough(new DecompressionStream('gzip'));
  return JSON.parse(await new Response(stream).text());
}

const BAR = `<div class="bar">
<button class="first" title="back to the start">|&lt;</button>
<button class="prev" title="the step before (with skip: the last that changed shared state)">&lt; Prev</button>
<button class="next" title="the next step (with skip: the next that changes shared state)">Next &gt;</button>
<button class="last" title="the end of the run">&gt;|</button>
<button class="viol" title="jump to the step that broke a rule">Violation</button>
<button class="play">Play</button>
<label>speed <select class="speed"><option value="400">slow</option>
<option value="120" selected>medium</option><option value="25">fast</option>
<option value="1">fastest</option></select></label>
<label><input type="checkbox" class="skip" checked> skip steps that change no shared state</label>
<input type="range" class="slider" min="0" max="0" value="0"><span class="pos"></span></div>`;

const LAYOUT = `<div class="banner"></div>${BAR}<div class="ev"></div><div class="cols"></div>
<h4>Timeline</h4><div class="timeline-box"></div>
<div class="grid"><div><h4>Shared state</h4><div class="shared"></div></div>
<div><h4>Tree</h4><div class="tree"></div></div></div>`;

export class Trace {
  // root: the element to draw into; data: see above; onmove(k, playing):
  // called whenever the step shown changes.
  constructor(root, data, onmove) {
    this.root = root;
    root.classList.add('s2pt-trace');
    root.innerHTML = LAYOUT;
    this.k = 0;
    this.timer = null;
    this.last = {};
    this.onmove = onmove || null;
    const $ = sel => root.querySelector(sel);
    this.$ = $;
    $('.first').onclick = () => { this.stop(); this.show(0); };
    $('.prev').onclick = () => { this.stop(); this.prev(); };
    $('.next').onclick = () => { this.stop(); this.next(); };
    $('.last').onclick = () => { this.stop(); this.show(this.N); };
    $('.viol').onclick = () => { this.stop(); this.violation(); };
    $('.play').onclick = () => this.play();
    $('.slider').oninput = e => { this.stop(); this.show(+e.target.value); };
    $('.speed').onchange = () => { if (this.timer) { this.stop(); this.play(); } };
    this.load(data);
  }

  get N() { return this.D.steps.length - 1; }
  get skip() { return this.$('.skip').checked; }

  load(D) {
    this.D = D;
    this.SH = [];
    this.rebuild(0);
    this.$('.timeline-box').innerHTML = D.pool[D.timeline] || '';
    this.$('.slider').max = this.N;
    this.show(Math.min(this.k, this.N));
  }

  // New steps from Python: {from, pool (strings added to the pool), steps
  // (the steps from `from` on), keys, names, timeline, xs}.
  splice(part) {
    const D = this.D;
    D.pool.push(...part.pool);
    D.steps.splice(part.from, D.steps.length, ...part.steps);
    D.keys = part.keys; D.names = part.names; D.xs = part.xs; D.timeline = part.timeline;
    this.rebuild(part.from);
    this.$('.timeline-box').innerHTML = D.pool[D.timeline] || '';
    this.$('.slider').max = this.N;
  }

  // Undo the shared-state deltas once, from step `from` on: per step, the
  // row ids in order, their cells, and the ids whose value changed.
  rebuild(from) {
    const D = this.D, P = D.pool;
    this.SH.length = from;
    let cur = {};
    if (from > 0) {
      const [order, cells] = this.SH[from - 1];
      order.forEach((kid, j) => { cur[kid] = cells[j]; });
    }
    for (let i = from; i < D.steps.length; i++) {
      const s = D.steps[i][1], hl = {};
      for (const [kid, c, h] of s[1]) { cur[kid] = c; if (h) hl[kid] = 1; }
      const order = P[s[0]].split(',').filter(x => x !== '').map(Number);
      const next = {};
      for (const kid of order) next[kid] = cur[kid];
      cur = next;
      this.SH.push([order, order.map(kid => cur[kid]), hl]);
    }
  }

  shared(i) {
    const D = this.D, P = D.pool, [order, cells, hl] = this.SH[i];
    let out = '<table class="shared">', sec = null;
    order.forEach((kid, j) => {
      if (D.keys[kid] !== sec) { sec = D.keys[kid]; out += P[sec]; }
      out += '<tr' + (hl[kid] ? ' class=chg' : '') + '>' + P[cells[j]] + '</tr>';
    });
    return out + '</table>';
  }

  // A step's tree; one not drawn yet (the widget draws a step's tree when
  // it is shown at rest) is the last drawn before it, and says so.
  tree(k) {
    const D = this.D, s = D.steps[k];
    if (s[2] >= 0) return D.pool[s[2]];
    let j = k;
    while (j > 0 && D.steps[j][2] < 0) j--;
    return '<div class="why">The tree as at step ' + j + ' (this step changed no shared ' +
      'state; its own tree is drawn when you stop here):</div>' + D.pool[D.steps[j][2]];
  }

  // A tree drawn after the step was sent: {k, pool, tree}.
  fill(part) {
    this.D.pool.push(...part.pool);
    this.D.steps[part.k][2] = part.tree;
    if (this.k === part.k) this.put('.tree', this.tree(part.k));
  }

  event(i, e) {
    const P = this.D.pool;
    if (typeof e === 'number') return P[e];
    return 'step ' + i + ': <b>' + this.D.names[e[0]] + '</b> in ' + P[e[1]] + '(): ' + P[e[2]] + P[e[3]];
  }

  // Write a panel only when its markup changed: a step mostly moves one
  // column and a row or two, and the tree is the costliest to parse.
  put(sel, html) {
    if (this.last[sel] !== html) { this.last[sel] = html; this.$(sel).innerHTML = html; }
  }

  show(i, playing) {
    const D = this.D, P = D.pool, $ = this.$;
    const k = this.k = Math.max(0, Math.min(this.N, i));
    const s = D.steps[k];
    this.put('.cols', s[0].map(c => c.map(j => j < 0
      ? '<div class="last">step ' + (k - 1) + ': ' + P[-1 - j] + '</div>' : P[j]).join('')).join(''));
    this.put('.shared', this.shared(k));
    this.put('.tree', this.tree(k));
    this.put('.ev', this.event(k - 1, s[3]));
    $('.pos').textContent = 'step ' + k + ' of ' + this.N;
    $('.slider').value = k;
    const b = $('.banner'), text = P[s[4]], bar = text.indexOf('|');
    b.className = 'banner ' + text.slice(0, bar);
    b.textContent = text.slice(bar + 1);
    const cursor = this.root.querySelector('.s2pt-cursor'), x = D.xs[Math.min(k, D.xs.length - 1)];
    if (cursor && x !== undefined) { cursor.setAttribute('x1', x); cursor.setAttribute('x2', x); }
    if (this.onmove) this.onmove(k, !!playing);
  }

  // The next (previous) step; with skip ticked, the next (previous) one that
  // changes shared state, or the end (start).
  after(k) {
    let n = k + 1;
    if (this.skip) while (n < this.N && this.D.steps[n][5]) n++;
    return n;
  }
  next(playing) { this.show(this.after(this.k), playing); }
  prev() {
    let n = this.k - 1;
    if (this.skip) while (n > 0 && this.D.steps[n][5]) n--;
    this.show(n);
  }

  // The first step whose banner reports a violation (-1: none).
  violationStep() {
    const P = this.D.pool;
    return this.D.steps.findIndex(s => P[s[4]].startsWith('bad|'));
  }
  violation() { const v = this.violationStep(); if (v >= 0) this.show(v); }

  stop() {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = null;
    this.$('.play').textContent = 'Play';
    this.show(this.k);                     // tells onmove that playing is over
  }

  play() {
    if (this.timer) { this.stop(); return; }
    if (this.k >= this.N) this.show(0, true);
    this.$('.play').textContent = 'Pause';
    this.timer = setInterval(() => {
      this.next(true);
      if (this.k >= this.N) this.stop();
    }, +this.$('.speed').value);
  }
}
