// The original TypeScript app's side of the queues, with the real Node bullmq 6.x.
//
//   node bullmq.mjs add  < {"redis": URL, "jobs": [{"queue", "name", "data", "opts"?}]}
//       Enqueues like the seed's QueueSystem (seed/performance-strategy.md): the
//       queues' defaultJobOptions below, priority and delay taken from the data
//       as addWhatsAppJob/addCrewAIJob do. Prints {"ids": [...]}.
//
//   node bullmq.mjs work < {"redis": URL, "queue": NAME, "concurrency": N, "count": K}
//       A no-op Node worker (the benchmark's baseline): prints {"ready": true}
//       once connected, processes K jobs, then prints {"completed": K}.
//
// Both read one JSON document on stdin and write one on stdout.
import { Queue, Worker } from 'bullmq';

// Verbatim from the seed's QueueSystem.
const DEFAULT_JOB_OPTIONS = {
  'whatsapp-processing': {
    removeOnComplete: 100,
    removeOnFail: 50,
    attempts: 3,
    backoff: { type: 'exponential', delay: 2000 },
  },
  'crewai-processing': {
    removeOnComplete: 100,
    removeOnFail: 50,
    attempts: 3,
    backoff: { type: 'exponential', delay: 3000 },
  },
  'admin-tasks': {
    removeOnComplete: 50,
    removeOnFail: 25,
    attempts: 2,
  },
};

function connection(url) {
  const parsed = new URL(url);
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    db: Number((parsed.pathname || '/0').slice(1) || 0),
    password: parsed.password ? decodeURIComponent(parsed.password) : undefined,
    maxRetriesPerRequest: null,
  };
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function add({ redis, prefix = 'bull', jobs }) {
  const queues = new Map();
  const ids = [];
  for (const { queue, name, data, opts = {} } of jobs) {
    if (!queues.has(queue)) {
      queues.set(queue, new Queue(queue, {
        connection: connection(redis),
        prefix,
        defaultJobOptions: DEFAULT_JOB_OPTIONS[queue] ?? {},
      }));
    }
    const job = await queues.get(queue).add(name, data, {
      priority: data.priority || 0,
      delay: data.delay || 0,
      ...opts,
    });
    ids.push(job.id);
  }
  await Promise.all([...queues.values()].map((queue) => queue.close()));
  return { ids };
}

async function work({ redis, prefix = 'bull', queue, concurrency = 1, count }) {
  let completed = 0;
  let worker;
  const finished = new Promise((resolve, reject) => {
    worker = new Worker(queue, async (job) => job.id, { connection: connection(redis), prefix, concurrency });
    worker.on('completed', () => {
      completed += 1;
      if (completed >= count) resolve();
    });
    worker.on('error', reject);
  });
  await worker.waitUntilReady();
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  await finished;
  await worker.close();
  return { completed };
}

const commands = { add, work };
const command = commands[process.argv[2]];
if (!command) {
  process.stderr.write(`usage: node bullmq.mjs ${Object.keys(commands).join('|')} < request.json\n`);
  process.exit(2);
}
const result = await command(await readStdin());
process.stdout.write(JSON.stringify(result) + '\n');
process.exit(0);
