// s2pt: the Interleave widget's panels (s2pt.widgets.TraceView), an
// anywidget whose module is trace.js followed by this file.  The kernel
// sends the run's step data: all of it as `blob` (gzipped JSON, as the
// HTML trace stores it) when a schedule is loaded, and the steps it adds
// as `splice` messages; `step` is the step shown, both ways.  Play,
// Prev / Next and the violation run here, without the kernel; the step
// reached is sent back when they stop.
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
    const load = async () => {
      const D = await unpack(model.get('blob'));
      if (t === null) t = new Trace(box, D, moved);
      else t.load(D);
      t.show(model.get('step'));
    };
    model.on('change:blob', load);
    model.on('change:step', () => {
      if (t !== null && t.k !== model.get('step')) { t.stop(); t.show(model.get('step')); }
    });
    model.on('msg:custom', msg => {
      if (t === null) return;
      if (msg.kind === 'splice') {
        t.splice(msg);
        t.show(model.get('step'));
      } else if (msg.kind === 'tree') {
        t.fill(msg);
      }
    });
    await load();
  },
};
