<?php

namespace App\Providers;

use App\Broadcasting\PusherHttpBroadcaster;
use Illuminate\Support\Facades\Broadcast;
use Illuminate\Support\ServiceProvider;

class AppServiceProvider extends ServiceProvider
{
    public function boot(): void
    {
        Broadcast::extend('pusher-http', fn ($app, array $config) => new PusherHttpBroadcaster($config));
    }
}
