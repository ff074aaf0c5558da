<?php
// A backend worker for Resound's Redis stream sinks (docs/streams.md), with plain php-redis:
// it joins a consumer group, reads entries with XREADGROUP, handles chat messages the way a
// chat app's message processor would (a word filter and @mentions), and acknowledges each
// entry with XACK once handled. An entry's fields are plain strings: `name`, `channel`,
// `event`, `data` (the client's JSON, as text), `socket_id`, `user_id`, `time` (ms).
//
//   REDIS_HOST=127.0.0.1 REDIS_PORT=6379 STREAM=resound:app-1:events GROUP=chat-workers \
//   CONSUMER=worker-1 php worker.php
//
// It prints one JSON line per handled entry. MAX_ENTRIES=n stops after n entries (0: never).

$host = getenv('REDIS_HOST') ?: '127.0.0.1';
$port = (int) (getenv('REDIS_PORT') ?: 6379);
$stream = getenv('STREAM') ?: 'resound:app-1:events';
$group = getenv('GROUP') ?: 'chat-workers';
$consumer = getenv('CONSUMER') ?: gethostname() . '-' . getmypid();
$maxEntries = (int) (getenv('MAX_ENTRIES') ?: 0);

$redis = new Redis();
$redis->connect($host, $port);

// Create the group (and the stream, if the server has not written yet). '0': a new group
// reads what the stream already holds; use '$' to start with new entries only.
try {
    $redis->xGroup('CREATE', $stream, $group, '0', true);
} catch (RedisException $e) {
    // BUSYGROUP: it exists already.
}
$redis->clearLastError();

const BLOCKED_WORDS = ['darn', 'heck'];

function filterWords(string $text): string
{
    foreach (BLOCKED_WORDS as $word) {
        $text = preg_replace('/\b' . preg_quote($word, '/') . '\b/i', str_repeat('*', strlen($word)), $text);
    }
    return $text;
}

function mentions(string $text): array
{
    preg_match_all('/@([A-Za-z0-9_-]+)/', $text, $m);
    return array_values(array_unique($m[1]));
}

/** Handles one entry; returns what it did, for the log line. */
function handle(array $f): array
{
    switch ($f['name']) {
        case 'client_event':
            // `data` is the JSON the client sent, as text: decode it only when needed.
            $payload = json_decode($f['data'], true);
            $text = is_array($payload) ? (string) ($payload['text'] ?? '') : (string) $payload;
            // Here a chat app would store the filtered message, notify the mentioned users
            // and count the message in its statistics.
            return [
                'name' => $f['name'],
                'channel' => $f['channel'],
                'event' => $f['event'],
                'user_id' => $f['user_id'] ?? null,
                'text' => filterWords($text),
                'mentions' => mentions($text),
            ];
        case 'member_added':
        case 'member_removed':
            return ['name' => $f['name'], 'channel' => $f['channel'], 'user_id' => $f['user_id']];
        default:
            return ['name' => $f['name'], 'channel' => $f['channel']];
    }
}

$handled = 0;
while ($maxEntries === 0 || $handled < $maxEntries) {
    // Up to 100 entries, waiting up to 5 s for the first.
    $count = $maxEntries === 0 ? 100 : min(100, $maxEntries - $handled);
    $batch = $redis->xReadGroup($group, $consumer, [$stream => '>'], $count, 5000);
    if (!$batch) {
        continue;
    }
    foreach ($batch[$stream] ?? [] as $id => $fields) {
        echo json_encode(handle($fields), JSON_UNESCAPED_SLASHES), "\n";
        $redis->xAck($stream, $group, [$id]);
        $handled++;
        if ($maxEntries !== 0 && $handled >= $maxEntries) {
            break;
        }
    }
}
