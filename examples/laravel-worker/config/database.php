<?php

use Illuminate\Support\Str;

// Where Redis is; each connection adds its database and options.
$server = [
    'url' => env('REDIS_URL'),
    'host' => env('REDIS_HOST', '127.0.0.1'),
    'username' => env('REDIS_USERNAME'),
    'password' => env('REDIS_PASSWORD'),
    'port' => env('REDIS_PORT', '6379'),
];

return [
    'redis' => [
        'client' => env('REDIS_CLIENT', 'phpredis'),

        'options' => [
            'cluster' => env('REDIS_CLUSTER', 'redis'),
            'prefix' => env('REDIS_PREFIX', Str::slug(env('APP_NAME', 'laravel'), '_').'_database_'),
        ],

        // The application's own keys (and the cache's), under the prefix above.
        'default' => $server + ['database' => env('REDIS_DB', '0')],

        // Resound's streams: keys exactly as Resound writes them.
        'streams' => $server + [
            'database' => env('REDIS_DB', '0'),
            'read_timeout' => 10,   // above the BLOCK time of chat:process-stream
            'options' => ['prefix' => ''],
        ],
    ],
];
