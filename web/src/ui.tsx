/** Small shared pieces: status badges, times, pretty JSON. */

export function StatusBadge({ status }: { status: string }): preact.JSX.Element {
  return (
    <span class={`badge st-${status}`} data-status={status}>
      {status}
    </span>
  );
}

export function when(t: string | null | undefined): string {
  if (!t) return '—';
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return t;
  return d.toLocaleString(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  });
}

/** JSON text pretty-printed; anything else as it is. */
export function pretty(text: string | null): string {
  if (text === null) return '';
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
