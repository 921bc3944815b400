// s2pt: the Interleave widget's panels (s2pt.widgets.TraceView), an
// anywidget whose module is trace.js followed by this file.  The kernel
// sends the run's step data: all of it as `blob` (gzipped JSON, as the
// HTML trace stores it) when a schedule is loaded, and the steps it adds
// as `splice` messages; `step` is the step shown, both ways.  Play,
// Prev / Next and the violation run here, without the kernel; the step
// reached is sent back when they stop.
//
// Only the user's moves go back: drawing a blob shows the kernel's step
// without reporting it (the panels start at step 0, and a report of that
// would rewind the kernel's World), and a step beyond the steps this view
// holds waits for them.  A message sent before this view existed, or
// while it was unpacking the blob, never reached it: once drawn it says
// `hello`, and the kernel sends the whole run again as the blob if it has
// sent any message since the blob.
export default {
  async render({ model, el }) {
    const box = document.createElement('div');
    el.appendChild(box);
    let t = null;
    const moved = (k, playing) => {
      if (!playing && model.get('step') !== k) {
        model.set('step', k);
        model.save_changes();
      }
    };
    // The kernel's step, when this view holds it; not reported back.
    const follow = () => {
      const k = model.get('step');
      if (k > t.N) return false;
      t.onmove = null;
      t.show(k);
      t.onmove = moved;
      return true;
    };
    const load = async () => {
      const D = await unpack(model.get('blob'));
      if (t === null) t = new Trace(box, D, null);
      else { t.onmove = null; t.load(D); }
      if (!follow()) t.onmove = moved;
    };
    model.on('change:blob', load);
    model.on('change:step', () => {
      if (t !== null && t.k !== model.get('step')) { t.stop(); follow(); }
    });
    model.on('msg:custom', msg => {
      if (t === null) return;
      if (msg.kind === 'splice') {
        t.splice(msg);
        follow();
      } else if (msg.kind === 'tree') {
        t.fill(msg);
      }
    });
    await load();
    model.send({ kind: 'hello' });
  },
};
