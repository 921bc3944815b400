// s2pt: the HTML trace page's start (after trace.js, in one inline module):
// unpack the steps, draw them, and let the arrow keys step.
const root = document.getElementById('trace');
if (typeof DecompressionStream === 'undefined') {
  root.innerHTML = '<div class="s2pt-trace"><div class="banner bad">This browser cannot ' +
    'unpack the steps (it needs DecompressionStream: Chrome 80, Firefox 113, Safari 16.4 or ' +
    'later). The race diagram below is plain text.</div></div>';
} else {
  unpack(document.getElementById('s2pt-data').textContent).then(D => {
    const t = new Trace(root, D);
    document.addEventListener('keydown', e => {
      if (e.key === 'ArrowRight') { t.stop(); t.next(); }
      if (e.key === 'ArrowLeft') { t.stop(); t.prev(); }
    });
    window.s2ptTrace = t;
    window.s2ptShow = k => t.show(k);
    window.s2ptStep = () => t.k;
  });
}
