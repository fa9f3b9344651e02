import { UsageError } from './flags';

/**
 * Splits a line into words at whitespace; "double quotes" keep spaces (and \" a quote) in
 * a word. A quote left open is an error, not a word that silently starts with `"`.
 */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const char = line[i]!;
    if (char === '"') {
      const start = i;
      let quoted = '';
      for (i++; i < line.length && line[i] !== '"'; i++) quoted += line[i] === '\\' && i + 1 < line.length ? line[++i] : line[i];
      if (i >= line.length) throw new UsageError(`unterminated quote: the " at column ${start + 1} is never closed`);
      word = (word ?? '') + quoted;
    } else if (/\s/.test(char)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else {
      word = (word ?? '') + char;
    }
  }
  if (word !== undefined) words.push(word);
  return words;
}
