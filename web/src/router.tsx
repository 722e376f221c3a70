/** Client-side routing with the history API: real URLs, so each page can be opened directly. */

let setPath: (p: string) => void = () => undefined;

export function onPath(f: (p: string) => void): void {
  setPath = f;
}

export function navigate(to: string, replace = false): void {
  if (to !== location.pathname + location.search) {
    if (replace) history.replaceState(null, '', to);
    else history.pushState(null, '', to);
  }
  setPath(location.pathname + location.search);
}

/** An in-app link: a real <a href> (so it opens in a new tab too) that routes without reloading. */
export function Link(props: {
  href: string;
  class?: string;
  children: preact.ComponentChildren;
  'aria-current'?: 'page' | undefined;
}): preact.JSX.Element {
  return (
    <a
      href={props.href}
      class={props.class}
      aria-current={props['aria-current']}
      onClick={(e) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
        e.preventDefault();
        navigate(props.href);
      }}
    >
      {props.children}
    </a>
  );
}
