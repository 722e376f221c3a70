/** The workflow graph as SVG. Every box is a keyboard-focusable button; text is rendered as text. */
import { useMemo } from 'preact/hooks';
import type { NodeView } from './api';
import { draw, type Box } from './graph';

interface Props {
  readonly nodes: readonly NodeView[];
  readonly root: string;
  readonly selected?: string | undefined;
  readonly onSelect?: ((n: NodeView) => void) | undefined;
  readonly label: string;
}

function path(points: ReadonlyArray<{ x: number; y: number }>): string {
  return points.map((p, i) => `${i ? 'L' : 'M'}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
}

function shape(b: Box): preact.JSX.Element {
  const x = b.x - b.width / 2;
  const y = b.y - b.height / 2;
  if (b.kind === 'if')
    return (
      <polygon
        class="shape"
        points={`${b.x},${y - 6} ${x + b.width + 10},${b.y} ${b.x},${y + b.height + 6} ${x - 10},${b.y}`}
      />
    );
  const r = b.kind === 'fork' || b.kind === 'merge' ? 17 : 6;
  return <rect class="shape" x={x} y={y} width={b.width} height={b.height} rx={r} ry={r} />;
}

export function GraphView({ nodes, root, selected, onSelect, label }: Props): preact.JSX.Element {
  const d = useMemo(() => draw(nodes, root), [nodes, root]);
  return (
    <div class="graph-scroll">
      <svg
        class="graph"
        role="group"
        aria-label={label}
        width={d.width}
        height={d.height}
        viewBox={`0 0 ${d.width} ${d.height}`}
      >
        <defs>
          <marker
            id="arrow"
            viewBox="0 0 10 10"
            refX="9"
            refY="5"
            markerWidth="7"
            markerHeight="7"
            orient="auto-start-reverse"
          >
            <path d="M0,0 L10,5 L0,10 z" class="arrowhead" />
          </marker>
        </defs>
        {d.arrows.map((a, i) => {
          const mid = a.points[Math.floor(a.points.length / 2)];
          return (
            <g key={`a${i}`} class={a.back ? 'edge back' : 'edge'} aria-hidden="true">
              <path d={path(a.points)} marker-end="url(#arrow)" />
              {a.label && mid ? (
                <text x={mid.x + 4} y={mid.y - 3} class="edge-label">
                  {a.label}
                </text>
              ) : null}
            </g>
          );
        })}
        {d.boxes.map((b) => {
          const interactive = onSelect !== undefined;
          const statusText = b.status;
          return (
            <g
              key={b.id}
              class={`box ${b.kind} st-${b.status}${selected === b.node.id ? ' selected' : ''}`}
              data-node={b.node.id}
              data-status={b.status}
              {...(interactive
                ? {
                    tabindex: 0,
                    role: 'button',
                    'aria-pressed': selected === b.node.id,
                    onClick: () => onSelect(b.node),
                    onKeyDown: (e: KeyboardEvent) => {
                      if (e.key === 'Enter' || e.key === ' ') {
                        e.preventDefault();
                        onSelect(b.node);
                      }
                    },
                  }
                : {})}
            >
              {shape(b)}
              <text x={b.x} y={b.y - b.height / 2 + 15} class="title" text-anchor="middle">
                {b.title}
              </text>
              {b.detail ? (
                <text x={b.x} y={b.y + 4} class="detail" text-anchor="middle">
                  {b.detail}
                </text>
              ) : null}
              {interactive ? (
                <text x={b.x} y={b.y + b.height / 2 - 7} class="status" text-anchor="middle">
                  {statusText}
                </text>
              ) : null}
            </g>
          );
        })}
      </svg>
    </div>
  );
}
