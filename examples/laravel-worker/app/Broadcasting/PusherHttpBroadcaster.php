<?php

namespace App\Broadcasting;

use Illuminate\Broadcasting\Broadcasters\Broadcaster;
use Illuminate\Broadcasting\BroadcastException;

/**
 * Publishes through the Pusher HTTP API (POST /apps/{id}/events, signed with the app secret),
 * as Laravel's `reverb` and `pusher` drivers do with the Pusher SDK. Debian does not package
 * that SDK, and this example installs nothing else; an application installed with Composer
 * keeps the stock driver and needs no class like this one. It publishes only: this worker
 * authorises no channel.
 */
class PusherHttpBroadcaster extends Broadcaster
{
    public function __construct(private array $config)
    {
    }

    public function auth($request)
    {
        throw new BroadcastException('This application does not authorise channels.');
    }

    public function validAuthenticationResponse($request, $result)
    {
        throw new BroadcastException('This application does not authorise channels.');
    }

    public function broadcast(array $channels, $event, array $payload = [])
    {
        $socket = $payload['socket'] ?? null;
        unset($payload['socket']);
        $body = json_encode(array_filter([
            'name' => $event,
            'channels' => $this->formatChannels($channels),
            'data' => json_encode($payload),
            'socket_id' => $socket,
        ], fn ($value) => $value !== null));

        $path = "/apps/{$this->config['app_id']}/events";
        $query = [
            'auth_key' => $this->config['key'],
            'auth_timestamp' => (string) time(),
            'auth_version' => '1.0',
            'body_md5' => md5($body),
        ];
        ksort($query);
        $signed = urldecode(http_build_query($query));
        $query['auth_signature'] = hash_hmac('sha256', "POST\n{$path}\n{$signed}", $this->config['secret']);

        $options = $this->config['options'] ?? [];
        $server = sprintf(
            '%s://%s:%s',
            $options['scheme'] ?? 'https',
            $options['host'] ?? '127.0.0.1',
            $options['port'] ?? 443,
        );
        $context = stream_context_create(['http' => [
            'method' => 'POST',
            'header' => "Content-Type: application/json\r\n",
            'content' => $body,
            'timeout' => 5,
            'ignore_errors' => true,
        ]]);
        $answer = @file_get_contents($server.$path.'?'.http_build_query($query), false, $context);
        $status = (int) (explode(' ', $http_response_header[0] ?? '')[1] ?? 0);
        if ($answer === false || $status === 0) {
            throw new BroadcastException("Publishing {$event}: no answer from {$server}.");
        }
        if ($status < 200 || $status > 299) {
            throw new BroadcastException("Publishing {$event}: {$status} {$answer}");
        }
    }
}
