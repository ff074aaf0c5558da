<?php

namespace App\Console\Commands;

use App\Events\UserMentioned;
use Illuminate\Console\Command;
use Illuminate\Support\Facades\Cache;
use Illuminate\Support\Facades\Redis;

class ProcessChatStream extends Command
{
    protected $signature = 'chat:process-stream
        {--consumer= : This worker\'s name in the group (default: host and process id)}
        {--stop-when-empty : Exit once the stream holds nothing new}';

    protected $description = 'Handles the chat messages Resound writes into a Redis stream';

    private const BLOCKED_WORDS = ['darn', 'heck'];

    public function handle(): int
    {
        $redis = Redis::connection('streams');
        $stream = 'chat:'.config('broadcasting.connections.reverb.app_id').':messages';
        $group = 'chat-processors';
        $consumer = $this->option('consumer') ?: gethostname().'-'.getmypid();
        $once = (bool) $this->option('stop-when-empty');

        try {
            // '0': a new group starts with what the stream holds; MKSTREAM if Resound has
            // not written yet.
            $redis->xgroup('CREATE', $stream, $group, '0', true);
        } catch (\RedisException $e) {
            // BUSYGROUP: another worker created it.
        }

        do {
            // Up to 100 entries, waiting up to 5 s for the first (0.1 s with --stop-when-empty).
            $batch = $redis->xreadgroup($group, $consumer, [$stream => '>'], 100, $once ? 100 : 5000);
            $entries = $batch[$stream] ?? [];
            foreach ($entries as $id => $fields) {
                $this->process($fields);
                $redis->xack($stream, $group, [$id]);
            }
        } while (! $once || $entries !== []);

        return self::SUCCESS;
    }

    /** @param array<string, string> $fields name, channel, event, data, socket_id, user_id, time */
    private function process(array $fields): void
    {
        $channel = $fields['channel'];
        if ($fields['name'] === 'member_added' || $fields['name'] === 'member_removed') {
            // Presence statistics: joins and departures per room.
            Cache::increment("chat:{$fields['name']}:{$channel}");

            return;
        }
        if ($fields['name'] !== 'client_event' || $fields['event'] !== 'client-message') {
            return;
        }
        // `data` is the whisper's JSON, as text; `user_id` is the sender (presence channels).
        $payload = json_decode($fields['data'], true);
        $text = (string) (is_array($payload) ? ($payload['text'] ?? '') : $payload);
        $from = $fields['user_id'] ?? 'anonymous';

        $clean = $text;
        foreach (self::BLOCKED_WORDS as $word) {
            $clean = preg_replace('/\b'.preg_quote($word, '/').'\b/i', str_repeat('*', strlen($word)), $clean);
        }

        // Each @username but the sender's own is told on its private channel. Here a username
        // is a presence user id; look it up in your users table if yours differ.
        preg_match_all('/@([A-Za-z0-9_-]+)/', $text, $m);
        foreach (array_diff(array_unique($m[1]), [$from]) as $username) {
            broadcast(new UserMentioned($username, $from, $channel, $clean));
        }

        Cache::increment("chat:messages:{$channel}");
        Cache::increment("chat:messages:user:{$from}");
        $this->line("{$channel} {$from}: {$clean}");
    }
}
