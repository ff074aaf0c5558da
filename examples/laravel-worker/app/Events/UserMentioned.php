<?php

namespace App\Events;

use Illuminate\Broadcasting\PrivateChannel;
use Illuminate\Contracts\Broadcasting\ShouldBroadcastNow;

class UserMentioned implements ShouldBroadcastNow
{
    public function __construct(
        public string $username,
        public string $by,
        public string $channel,
        public string $text,
    ) {
    }

    public function broadcastOn(): PrivateChannel
    {
        return new PrivateChannel("user.{$this->username}");   // private-user.{username}
    }

    public function broadcastAs(): string
    {
        return 'mention';
    }

    public function broadcastWith(): array
    {
        return ['by' => $this->by, 'channel' => $this->channel, 'text' => $this->text];
    }
}
