<?php

return [
    'default' => env('BROADCAST_CONNECTION', 'reverb'),

    'connections' => [
        // The `reverb` connection of config/broadcasting.php, with the `pusher-http` driver of
        // app/Broadcasting/ instead of the SDK-based `reverb` driver (see that class).
        'reverb' => [
            'driver' => 'pusher-http',
            'key' => env('REVERB_APP_KEY'),
            'secret' => env('REVERB_APP_SECRET'),
            'app_id' => env('REVERB_APP_ID'),
            'options' => [
                'host' => env('REVERB_HOST', '127.0.0.1'),
                'port' => env('REVERB_PORT', 8080),
                'scheme' => env('REVERB_SCHEME', 'http'),
            ],
        ],
    ],
];
