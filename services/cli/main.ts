/**
 * @module cli
 * `fnhost <command>`: the host (`start`) and the client commands. Returns the process exit code.
 */
export async function main(argv: string[]): Promise<number> {
  const [cmd] = argv;
  switch (cmd) {
    default:
      process.stderr.write(`fnhost: unknown command ${JSON.stringify(cmd ?? '')}\n`);
      return 2;
  }
}
